// electra_fast._vi: the Python binding of the Vietnamese segmenter. Text crosses as UTF-8 (lone
// surrogates pass through, so that any Python str can be segmented and its offsets stay right);
// all segmentation runs with the GIL released, batches on several threads.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <memory>
#include <mutex>
#include <string_view>
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

void require_str(const py::handle& text, const char* argument) {
  if (!PyUnicode_Check(text.ptr()))
    throw py::type_error(std::string(argument) + " must be str, got " +
                         std::string(py::str(py::type::of(text).attr("__name__"))));
}

std::string utf8_of(const py::handle& text, const char* argument) {
  require_str(text, argument);
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

// The same tokens joined by spaces, as one str: the text the way the Vietnamese ELECTRA corpus
// was written, without a Python object per token.
py::str words_of(const std::vector<Piece>& pieces) {
  std::string joined;
  bool first = true;
  for (const Piece& p : pieces) {
    if (p.dropped_by_coccoc) continue;
    if (!first) joined += ' ';
    joined += p.text;
    first = false;
  }
  return str_of(joined);
}

// Character spans of the non-space pieces (with punctuation unless `keep_punct` is false).
py::list spans_of(const std::vector<Piece>& pieces, bool keep_punct) {
  py::list out;
  for (const Piece& p : pieces) {
    if (!keep_punct && p.type == PieceType::kPunct) continue;
    if (p.char_end <= p.char_start) continue;
    out.append(py::make_tuple(p.char_start, p.char_end));
  }
  return out;
}

// The UTF-8 of each text, borrowed from the str objects where Python holds it (every ASCII str,
// and others once encoded), copied only for text with lone surrogates. `keep` holds the
// objects so that the borrowed bytes outlive the call.
struct Utf8Texts {
  std::vector<std::string_view> views;
  std::vector<py::object> keep;
  std::vector<std::unique_ptr<std::string>> owned;
};

// The UTF-8 of a str, borrowed where Python holds it (every ASCII str, and others once encoded);
// text with lone surrogates, which strict UTF-8 refuses, is encoded into `owned` instead and
// passes through as Python would.
std::string_view utf8_view(const py::handle& text, const char* argument, std::string& owned) {
  require_str(text, argument);
  Py_ssize_t size = 0;
  if (const char* data = PyUnicode_AsUTF8AndSize(text.ptr(), &size)) return {data, size_t(size)};
  PyErr_Clear();
  owned = utf8_of(text, argument);
  return owned;
}

Utf8Texts utf8_texts(const py::handle& texts) {
  if (PyUnicode_Check(texts.ptr()))
    throw py::type_error("texts must be a list of str, got a single str");
  Utf8Texts out;
  for (py::handle item : py::iter(texts)) {
    out.keep.push_back(py::reinterpret_borrow<py::object>(item));
    std::string owned;
    std::string_view view = utf8_view(item, "texts[i]", owned);
    if (view.data() == owned.data()) {  // encoded here: kept as long as the batch
      out.owned.push_back(std::make_unique<std::string>(std::move(owned)));
      view = *out.owned.back();
    }
    out.views.push_back(view);
  }
  return out;
}

// One text's pieces. The GIL is released only for a long text: a sentence takes a few
// microseconds, too short for another thread to gain from the release.
std::vector<Piece> segment_one(const Segmenter& seg, py::handle text, int mode) {
  constexpr size_t kReleaseGilFrom = 4096;  // bytes
  std::string owned;
  std::string_view utf8 = utf8_view(text, "text", owned);
  Mode md = mode_of(mode);
  if (utf8.size() < kReleaseGilFrom) return seg.segment(utf8, md);
  py::gil_scoped_release release;
  return seg.segment(utf8, md);
}

// Threads for `count` texts: `num_threads` (0: all cores), never more than there are texts.
unsigned worker_count(int num_threads, size_t count) {
  unsigned workers = num_threads > 0 ? unsigned(num_threads) : std::max(1u, std::thread::hardware_concurrency());
  return std::min<unsigned>(workers, unsigned(std::max<size_t>(1, count)));
}

// Runs `work(i)` for every text index on `num_threads` threads (0: all cores), the GIL released.
template <class Work>
void parallel_for(size_t count, int num_threads, const Work& work) {
  unsigned workers = worker_count(num_threads, count);
  py::gil_scoped_release release;
  std::atomic<size_t> next{0};
  auto loop = [&]() {
    for (size_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < count;) work(i);
  };
  std::vector<std::thread> pool;
  for (unsigned w = 1; w < workers; ++w) pool.emplace_back(loop);
  loop();
  for (auto& th : pool) th.join();
}

// Segments the texts on `num_threads` threads while this thread, holding the GIL, turns each
// finished text into Python objects in order (`convert`): building the objects, which only one
// thread can do, overlaps the segmentation instead of following it. When the next text in order
// is not ready, this thread segments one itself (without the GIL) rather than wait.
template <class Convert>
py::list segment_batch(const Segmenter& seg, py::handle texts, int mode, int num_threads, const Convert& convert) {
  Utf8Texts utf8 = utf8_texts(texts);
  Mode md = mode_of(mode);
  const size_t n = utf8.views.size();
  const unsigned workers = worker_count(num_threads, n);
  std::vector<std::vector<Piece>> pieces(n);
  std::unique_ptr<std::atomic<bool>[]> done(new std::atomic<bool>[n]);
  for (size_t i = 0; i < n; ++i) done[i].store(false, std::memory_order_relaxed);
  std::atomic<size_t> next{0};
  std::exception_ptr failure;
  std::mutex failure_lock;
  auto take_one = [&]() {
    size_t i = next.fetch_add(1, std::memory_order_relaxed);
    if (i >= n) return false;
    try {
      pieces[i] = seg.segment(utf8.views[i], md);
    } catch (...) {
      std::lock_guard<std::mutex> hold(failure_lock);
      if (!failure) failure = std::current_exception();
    }
    done[i].store(true, std::memory_order_release);
    return true;
  };
  std::vector<std::thread> pool;
  // Stops the helpers (they finish the text in hand) and joins them on every way out, errors
  // from `convert` included: they use this frame's locals.
  struct Joiner {
    std::vector<std::thread>& pool;
    std::atomic<size_t>& next;
    size_t n;
    ~Joiner() {
      next.store(n, std::memory_order_relaxed);
      py::gil_scoped_release release;
      for (auto& th : pool) th.join();
    }
  } joiner{pool, next, n};
  for (unsigned w = 1; w < workers; ++w)
    pool.emplace_back([&]() {
      while (take_one()) {
      }
    });
  py::list out(n);
  // The collector paused while the batch's objects are made: otherwise the hundreds of
  // thousands of new lists and tuples set off collections that keep traversing all of them
  // (10-20% of the time of a large batch). They hold only str and int, so no cycle is missed.
  struct GcPause {
    int was_enabled = PyGC_Disable();
    ~GcPause() {
      if (was_enabled) PyGC_Enable();
    }
  } gc_pause;
  for (size_t i = 0; i < n; ++i) {
    if (!done[i].load(std::memory_order_acquire)) {
      py::gil_scoped_release release;
      while (!done[i].load(std::memory_order_acquire))
        if (!take_one()) std::this_thread::yield();
    }
    {
      std::lock_guard<std::mutex> hold(failure_lock);  // another helper may be setting it
      if (failure) std::rethrow_exception(failure);
    }
    PyList_SET_ITEM(out.ptr(), Py_ssize_t(i), convert(pieces[i]).release().ptr());
    std::vector<Piece>().swap(pieces[i]);  // freed while still warm in the cache
  }
  return out;
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
            return tokens_of(segment_one(seg, text, mode));
          })
      .def(
          "_segment",
          [](const Segmenter& seg, py::handle text, int mode, bool keep_punct) {
            return spans_of(segment_one(seg, text, mode), keep_punct);
          })
      .def(
          "_tokens_batch",
          [](const Segmenter& seg, py::handle texts, int mode, int num_threads) {
            return segment_batch(seg, texts, mode, num_threads, tokens_of);
          })
      .def(
          "_words_batch",
          [](const Segmenter& seg, py::handle texts, int mode, int num_threads) {
            return segment_batch(seg, texts, mode, num_threads, words_of);
          })
      .def(
          "_count_batch",
          // The C++ core alone, for benchmarks: segments like _tokens_batch and returns how
          // many tokens word_tokenize would give, building no Python objects per token.
          [](const Segmenter& seg, py::handle texts, int mode, int num_threads) {
            Utf8Texts utf8 = utf8_texts(texts);
            Mode md = mode_of(mode);
            std::vector<size_t> counts(utf8.views.size());
            parallel_for(counts.size(), num_threads, [&](size_t i) {
              for (const Piece& p : seg.segment(utf8.views[i], md)) counts[i] += !p.dropped_by_coccoc;
            });
            size_t total = 0;
            for (size_t c : counts) total += c;
            return total;
          })
      .def(
          "_segment_batch",
          [](const Segmenter& seg, py::handle texts, int mode, bool keep_punct, int num_threads) {
            return segment_batch(seg, texts, mode, num_threads,
                                 [keep_punct](const std::vector<Piece>& p) { return spans_of(p, keep_punct); });
          });
}
