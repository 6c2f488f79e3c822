// coccoc's dictionaries in a compact, read-only form: the multi-term trie (words with their
// scores), the syllable trie and the syllable-pair scores that split run-together text.
//
// `Dictionary::open` compiles the text sources once into a single file beside them and
// memory-maps that file afterwards, so that every later load is a few milliseconds and the
// pages are shared between processes. Queries never write: one Dictionary serves any number of
// threads.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "vi_text.h"

namespace electra_fast::vi {

// One cell of a double-array trie (Aoe's layout). The node in cell n has its children in
// cells base + code(cp), each of which names n as its `check`: a step is one lookup in the code
// table (a few hot cache lines) and one read of 8 bytes, whatever the number of children. What
// a node holds lives in a parallel array, read only where a word may end, so that the cells the
// walks touch stay dense in the cache.
struct TrieCell {
  int32_t base;   // 0 for a node without children
  int32_t check;  // the parent's cell; -1 for a free cell and for the root (cell 0)
};
struct TrieData {
  float weight;
  int32_t value;  // flags (multi-term trie) or syllable index, -1 for none (syllable trie)
};

struct TrieView {
  uint32_t cells = 0;  // 0 when the trie is absent
  const TrieCell* cell = nullptr;
  const TrieData* data = nullptr;  // by cell
  // code[cp] for cp < code_span: 1 + the rank of cp among the trie's code points, 0 for a code
  // point on no edge.
  const uint16_t* code = nullptr;
  uint32_t code_span = 0;  // 0 when the trie is absent: every step then fails

  static constexpr int32_t kEnding = 1, kSpecial = 2;  // flags (multi-term trie only)
  float weight(int32_t n) const { return data[n].weight; }
  int32_t value(int32_t n) const { return data[n].value; }
  int32_t flags(int32_t n) const { return data[n].value; }

  // The child of `n` along `cp`, or -1. Code 0 needs no test of its own: it lands on cell
  // `base`, which no child of n occupies, so its check never names n. The range test keeps
  // every step inside the file whatever the file holds, instead of a scan of all cells on load
  // (which would also bring every page of the trie into memory).
  int32_t child(int32_t n, uint32_t cp) const {
    if (cp >= code_span) return -1;
    uint32_t c = uint32_t(cell[n].base) + code[cp];
    return c < cells && cell[c].check == n ? int32_t(c) : -1;
  }
};

// Scores of syllable pairs (first, second) by syllable index: rows in CSR form, columns sorted.
struct PairView {
  uint32_t rows = 0;
  const uint32_t* row_start = nullptr;  // rows + 1
  const uint32_t* column = nullptr;
  const float* score = nullptr;
  // Sets `out` to the score of the pair and returns true, or returns false where the pair was
  // never seen (coccoc adds nothing then).
  bool find(int32_t first, int32_t second, float& out) const;
};

struct DictionaryOptions {
  bool load_nontone_data = true;
  // coccoc reads d/gi and i/y spelling variants but, because its lower-casing table is not yet
  // built when it reads them, none of them ever matches: coccoc adds no variant. false (the
  // default) reproduces that; true adds the variants as the tables intend.
  bool spelling_variants = false;
};

class Dictionary {
 public:
  // Opens the compiled form of the sources in `dir` (compiling it there first when it is
  // missing or older than the sources; in memory only when `dir` is read-only).
  static std::shared_ptr<const Dictionary> open(const std::string& dir, DictionaryOptions options);
  ~Dictionary();

  CharTable chars;
  TrieView words;      // multi-term dictionary: lower-cased words, syllables joined by ' '
  TrieView syllables;  // syllables without tones, for run-together text
  PairView pairs;
  bool has_nontone_data() const { return pairs.rows != 0; }
  std::string compiled_path;  // the file the dictionary was mapped from ("" when in memory)
  size_t mapped_bytes = 0;

 private:
  Dictionary() = default;
  void attach(const char* data, size_t size);
  std::vector<char> owned_;
  void* map_ = nullptr;
};

}  // namespace electra_fast::vi
