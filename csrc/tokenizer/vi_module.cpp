// electra_fast._vi: the Python binding of the Vietnamese segmenter. Text crosses as UTF-8 (lone
// surrogates pass through, so that any Python str can be segmented and its offsets stay right);
// all segmentation runs with the GIL released, batches on several threads.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <thread>

#include "vi_segment.h"

namespace py = pybind11;
using electra_fast::vi::Dictionary;
using electra_fast::vi::DictionaryOptions;
using electra_fast::vi::Mode;
using electra_fast::vi::Piece;
using electra_fast::vi::PieceType;
using electra_fast::vi::Segmenter;

namespace {

std::string utf8_of(const py::handle& text, const char* argument) {
  if (!PyUnicode_Check(text.ptr()))
    throw py::type_error(std::string(argument) + " must be str, got " +
                         std::string(py::str(py::type::of(text).attr("__name__"))));
  PyObject* bytes = PyUnicode_AsEncodedString(text.ptr(), "utf-8", "surrogatepass");
  if (bytes == nullptr) throw py::error_already_set();
  std::string out(PyBytes_AS_STRING(bytes), size_t(PyBytes_GET_SIZE(bytes)));
  Py_DECREF(bytes);
  return out;
}

py::str str_of(const std::string& utf8) {
  PyObject* s = PyUnicode_DecodeUTF8(utf8.data(), Py_ssize_t(utf8.size()), "surrogatepass");
  if (s == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(s);
}

Mode mode_of(int mode) {
  if (mode < 0 || mode > 2) throw py::value_error("mode must be 0 (normal), 1 (host) or 2 (url), got " + std::to_string(mode));
  return Mode(mode);
}

// What coccoc's word_tokenize returns.
py::list tokens_of(const std::vector<Piece>& pieces) {
  py::list out;
  for (const Piece& p : pieces)
    if (!p.dropped_by_coccoc) out.append(str_of(p.text));
  return out;
}

// Character spans of the non-space pieces (with punctuation unless `keep_punct` is false).
py::list spans_of(const std::vector<Piece>& pieces, bool keep_punct) {
  py::list out;
  for (const Piece& p : pieces) {
    if (p.type == PieceType::kSpace || (!keep_punct && p.type == PieceType::kPunct)) continue;
    if (p.char_end <= p.char_start) continue;
    out.append(py::make_tuple(p.char_start, p.char_end));
  }
  return out;
}

std::vector<std::vector<Piece>> segment_many(const Segmenter& seg, const std::vector<std::string>& texts,
                                             Mode mode, int num_threads) {
  std::vector<std::vector<Piece>> out(texts.size());
  unsigned workers = num_threads > 0 ? unsigned(num_threads) : std::max(1u, std::thread::hardware_concurrency());
  workers = std::min<unsigned>(workers, unsigned(std::max<size_t>(1, texts.size())));
  std::atomic<size_t> next{0};
  auto work = [&]() {
    for (size_t i; (i = next.fetch_add(1)) < texts.size();) out[i] = seg.segment(texts[i], mode);
  };
  std::vector<std::thread> pool;
  for (unsigned w = 1; w < workers; ++w) pool.emplace_back(work);
  work();
  for (auto& th : pool) th.join();
  return out;
}

std::vector<std::string> utf8_list(const py::handle& texts) {
  if (PyUnicode_Check(texts.ptr()))
    throw py::type_error("texts must be a list of str, got a single str");
  std::vector<std::string> out;
  for (py::handle item : py::iter(texts)) out.push_back(utf8_of(item, "texts[i]"));
  return out;
}

// The texts converted under the GIL, segmented without it.
std::vector<std::vector<Piece>> segment_batch(const Segmenter& seg, py::handle texts, int mode, int num_threads) {
  auto utf8 = utf8_list(texts);
  Mode md = mode_of(mode);
  py::gil_scoped_release release;
  return segment_many(seg, utf8, md, num_threads);
}

}  // namespace

PYBIND11_MODULE(_vi, m) {
  m.doc() = "Vietnamese word segmentation compatible with coccoc-tokenizer (electra_fast's own C++).";
  py::class_<Dictionary, std::shared_ptr<Dictionary>>(m, "Dictionary")
      .def_static(
          "open",
          [](const std::string& dir, bool load_nontone_data, bool spelling_variants) {
            py::gil_scoped_release release;
            auto dict = Dictionary::open(dir, DictionaryOptions{load_nontone_data, spelling_variants});
            return std::const_pointer_cast<Dictionary>(dict);
          },
          py::arg("dir"), py::arg("load_nontone_data") = true, py::arg("spelling_variants") = false)
      .def_readonly("compiled_path", &Dictionary::compiled_path)
      .def_readonly("mapped_bytes", &Dictionary::mapped_bytes)
      .def_property_readonly("has_nontone_data", &Dictionary::has_nontone_data);

  py::class_<Segmenter>(m, "Segmenter")
      .def(py::init([](std::shared_ptr<Dictionary> dict) {
             if (!dict) throw py::value_error("dictionary must not be None");
             return Segmenter(dict);
           }),
           py::arg("dictionary"))
      .def(
          "_tokens",
          [](const Segmenter& seg, py::handle text, int mode) {
            std::string s = utf8_of(text, "text");
            Mode md = mode_of(mode);
            std::vector<Piece> pieces;
            {
              py::gil_scoped_release release;
              pieces = seg.segment(s, md);
            }
            return tokens_of(pieces);
          })
      .def(
          "_segment",
          [](const Segmenter& seg, py::handle text, int mode, bool keep_punct) {
            std::string s = utf8_of(text, "text");
            Mode md = mode_of(mode);
            std::vector<Piece> pieces;
            {
              py::gil_scoped_release release;
              pieces = seg.segment(s, md);
            }
            return spans_of(pieces, keep_punct);
          })
      .def(
          "_tokens_batch",
          [](const Segmenter& seg, py::handle texts, int mode, int num_threads) {
            py::list out;
            for (auto& p : segment_batch(seg, texts, mode, num_threads)) out.append(tokens_of(p));
            return out;
          })
      .def(
          "_segment_batch",
          [](const Segmenter& seg, py::handle texts, int mode, bool keep_punct, int num_threads) {
            py::list out;
            for (auto& p : segment_batch(seg, texts, mode, num_threads)) out.append(spans_of(p, keep_punct));
            return out;
          });
}
