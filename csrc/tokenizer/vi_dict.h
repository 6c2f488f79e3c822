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

// One trie node. `key` is the code point of the edge into the node (low 24 bits) and the node's
// flags (high 8 bits).
struct TrieNode {
  uint32_t first_child;
  uint32_t key;
  float weight;
};

// A trie in breadth-first order: the children of a node are consecutive nodes sorted by code
// point. A lookup reads the node's record and the next (for where its children end) and scans
// its children's records, which hold what the next step needs: mostly one cache miss a step.
struct TrieView {
  uint32_t nodes = 0;              // 0 when the trie is absent; node[nodes] is a sentinel
  const TrieNode* node = nullptr;
  const int32_t* index = nullptr;  // per node: syllable index or -1 (syllable trie only)
  // The root's children by code point below root_span (built on load): every lookup starts at
  // the root, whose hundreds of children would otherwise take a binary search.
  const int32_t* root_child = nullptr;
  uint32_t root_span = 0;

  static constexpr uint8_t kEnding = 1, kSpecial = 2;  // flags (multi-term trie only)
  static constexpr uint32_t kCodePointMask = 0xFFFFFF;
  float weight(int32_t n) const { return node[n].weight; }
  uint8_t flags(int32_t n) const { return uint8_t(node[n].key >> 24); }
  uint32_t code_point(int32_t n) const { return node[n].key & kCodePointMask; }

  // The child of `n` along `cp`, or -1.
  int32_t child(int32_t n, uint32_t cp) const {
    if (n == 0 && cp < root_span) return root_child[cp];
    if (nodes == 0) return -1;
    uint32_t lo = node[n].first_child, hi = node[n + 1].first_child;
    while (hi - lo > 8) {  // a few nodes near the root have hundreds of children
      uint32_t mid = lo + (hi - lo) / 2;
      if (code_point(int32_t(mid)) <= cp) lo = mid; else hi = mid;
    }
    for (; lo < hi; ++lo) {
      uint32_t c = code_point(int32_t(lo));
      if (c >= cp) return c == cp ? int32_t(lo) : -1;
    }
    return -1;
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
  std::vector<int32_t> word_root_, syllable_root_;
  void* map_ = nullptr;
};

}  // namespace electra_fast::vi
