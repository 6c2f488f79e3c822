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

// One edge of a trie in an open-addressing hash table keyed by (parent, code point).
struct TrieSlot {
  uint32_t parent;  // kEmptySlot where the slot is free
  uint32_t code_point;
  uint32_t child;
};
constexpr uint32_t kEmptySlot = 0xFFFFFFFFu;

struct TrieView {
  const TrieSlot* slots = nullptr;
  uint64_t mask = 0;               // slot count - 1 (a power of two), or 0 when empty
  const float* weight = nullptr;   // per node
  const uint8_t* flags = nullptr;  // per node: kEnding | kSpecial (multi-term trie only)
  const int32_t* index = nullptr;  // per node: syllable index or -1 (syllable trie only)

  static constexpr uint8_t kEnding = 1, kSpecial = 2;
  static uint64_t hash(uint32_t parent, uint32_t cp) {
    uint64_t h = (uint64_t(parent) << 32 | cp) * 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 29);
  }
  // The child of `node` along `cp`, or -1.
  int32_t child(int32_t node, uint32_t cp) const {
    if (slots == nullptr) return -1;
    for (uint64_t i = hash(uint32_t(node), cp) & mask;; i = (i + 1) & mask) {
      const TrieSlot& s = slots[i];
      if (s.parent == kEmptySlot) return -1;
      if (s.parent == uint32_t(node) && s.code_point == cp) return int32_t(s.child);
    }
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
