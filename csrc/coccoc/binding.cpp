// electra_fast._coccoc: a thin binding to an installed coccoc-tokenizer (header-only C++,
// LGPL-3.0), built only when setup.py finds its headers. It lets a user check our segmenter
// against the original, or use the original, behind the same Python interface.
//
// coccoc's header-only core defines globals, so this is the one file that includes it. Its
// tokenizer is a process-wide singleton whose lookups write a shared cache: every call holds
// one lock (without the GIL), so a batch runs on one thread whatever is asked.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include <tokenizer/config.h>
#include <tokenizer/tokenizer.hpp>

namespace py = pybind11;

namespace {

std::mutex coccoc_lock;
bool initialized = false;
std::string initialized_dir;
bool initialized_nontone = false;

// (text, byte start, byte end, is punctuation) of each token coccoc's word_tokenize returns.
using Tokens = std::vector<std::tuple<std::string, int, int, bool>>;

// coccoc's segment_general (what its word_tokenize returns), under the lock.
std::vector<FullToken> segment_general(const std::string& utf8, int mode) {
  std::lock_guard<std::mutex> hold(coccoc_lock);
  if (!initialized) throw std::runtime_error("coccoc is not initialised");
  return Tokenizer::instance().segment_general(utf8, mode);
}

// coccoc's plain C++ segment (no punctuation; what its own tools call), under the lock.
std::vector<FullToken> segment_plain(const std::string& utf8, int mode) {
  std::lock_guard<std::mutex> hold(coccoc_lock);
  if (!initialized) throw std::runtime_error("coccoc is not initialised");
  return Tokenizer::instance().segment(utf8, false, mode);
}

Tokens segment(const std::string& utf8, int mode) {
  Tokens out;
  for (const FullToken& t : segment_general(utf8, mode))
    out.emplace_back(t.text, t.original_start, t.original_end, t.type == int32_t(Token::PUNCT));
  return out;
}

}  // namespace

PYBIND11_MODULE(_coccoc, m) {
  m.doc() = "A thin binding to the installed coccoc-tokenizer (see electra_fast.tokenization.vietnamese).";
  m.attr("default_dicts") = DICT_PATH;
  m.def(
      "initialize",
      [](const std::string& dir, bool load_nontone_data) {
        py::gil_scoped_release release;
        std::lock_guard<std::mutex> hold(coccoc_lock);
        if (initialized) {
          if (dir != initialized_dir || load_nontone_data != initialized_nontone)
            throw py::value_error("coccoc is a process-wide singleton, already initialised from " +
                                  initialized_dir + " with load_nontone_data=" +
                                  (initialized_nontone ? "True" : "False") + "; it cannot load " + dir +
                                  " with load_nontone_data=" + (load_nontone_data ? "True" : "False"));
          return;
        }
        if (Tokenizer::instance().initialize(dir, load_nontone_data) < 0)
          throw std::runtime_error("coccoc could not load its dictionaries from " + dir);
        initialized = true;
        initialized_dir = dir;
        initialized_nontone = load_nontone_data;
      },
      py::arg("dicts"), py::arg("load_nontone_data"));
  m.def(
      "segment",
      [](const std::vector<std::string>& texts, int mode) {
        std::vector<Tokens> segmented;
        segmented.reserve(texts.size());
        {
          py::gil_scoped_release release;
          for (const std::string& text : texts) segmented.push_back(segment(text, mode));
        }
        // Token texts go back as bytes: the caller decodes them as it encoded the input
        // (lone surrogates pass through).
        py::list out;
        for (const Tokens& tokens : segmented) {
          py::list row;
          for (const auto& [text, start, end, punct] : tokens)
            row.append(py::make_tuple(py::bytes(text), start, end, punct));
          out.append(row);
        }
        return out;
      },
      py::arg("texts_utf8"), py::arg("mode"));
  m.def(
      "count",
      // coccoc's C++ alone, for benchmarks: how many tokens word_tokenize would return or, with
      // `plain`, how many its C++ `segment` returns.
      [](const std::vector<std::string>& texts, int mode, bool plain) {
        py::gil_scoped_release release;
        size_t count = 0;
        for (const std::string& text : texts)
          count += (plain ? segment_plain(text, mode) : segment_general(text, mode)).size();
        return count;
      },
      py::arg("texts_utf8"), py::arg("mode"), py::arg("plain") = false);
}
