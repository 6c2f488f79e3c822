// Building the dictionary's tries: a trie under construction with what coccoc keeps per node
// (TrieBuilder), and its compilation into the double array that TrieView reads. Only the
// dictionary's compile uses these.
#pragma once
#include <climits>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "vi_dict.h"

namespace electra_fast::vi {

// A trie's edges, (parent << 32 | code point) -> child, in one open-addressing table: millions
// of edges without an allocation each (an unordered_map's nodes, and their frees, took a third
// of the compile).
class EdgeMap {
 public:
  // The child along `key`; `child` is put there first when there is none (then second is true).
  std::pair<uint32_t, bool> find_or_add(uint64_t key, uint32_t child) {
    if (2 * (count_ + 1) > keys_.size()) grow();
    size_t i = slot(key);
    for (; keys_[i] != kEmpty; i = (i + 1) & mask_)
      if (keys_[i] == key) return {values_[i], false};
    keys_[i] = key;
    values_[i] = child;
    ++count_;
    return {child, true};
  }
  int64_t find(uint64_t key) const {
    if (keys_.empty()) return -1;
    for (size_t i = slot(key); keys_[i] != kEmpty; i = (i + 1) & mask_)
      if (keys_[i] == key) return values_[i];
    return -1;
  }
  size_t size() const { return count_; }
  template <class Visit>
  void for_each(const Visit& visit) const {
    for (size_t i = 0; i < keys_.size(); ++i)
      if (keys_[i] != kEmpty) visit(keys_[i], values_[i]);
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t(0);  // no parent has 2^32 - 1 nodes before it
  size_t slot(uint64_t key) const { return size_t((key * 0x9E3779B97F4A7C15ull) >> shift_); }
  void grow() {
    std::vector<uint64_t> keys(std::max<size_t>(1024, keys_.size() * 2), kEmpty);
    std::vector<uint32_t> values(keys.size());
    keys_.swap(keys);
    values_.swap(values);
    mask_ = keys_.size() - 1;
    shift_ = 64;  // the slot is the hash's top log2(capacity) bits
    for (size_t c = keys_.size(); c > 1; c >>= 1) --shift_;
    count_ = 0;
    for (size_t i = 0; i < keys.size(); ++i)
      if (keys[i] != kEmpty) find_or_add(keys[i], values[i]);
  }
  std::vector<uint64_t> keys_;
  std::vector<uint32_t> values_;
  size_t count_ = 0, mask_ = 0;
  int shift_ = 64;
};

// A trie under construction, with what coccoc keeps per node before it compiles the trie.
struct TrieBuilder {
  std::vector<int32_t> frequency{-1};  // -1: no word ends here
  std::vector<int32_t> space_count{0};
  std::vector<uint8_t> special{0};
  std::vector<int32_t> length{0};
  EdgeMap edges;

  uint32_t walk_or_add(const std::vector<uint32_t>& cps) {
    uint32_t node = 0;
    for (uint32_t cp : cps) {
      uint64_t key = uint64_t(node) << 32 | cp;
      auto [child, added] = edges.find_or_add(key, uint32_t(frequency.size()));
      if (added) {
        frequency.push_back(-1);
        space_count.push_back(0);
        special.push_back(0);
        length.push_back(0);
      }
      node = child;
    }
    return node;
  }
  int32_t find(const std::vector<uint32_t>& cps) const {
    int64_t node = 0;
    for (uint32_t cp : cps)
      if ((node = edges.find(uint64_t(node) << 32 | cp)) < 0) return -1;
    return int32_t(node);
  }
  // Adds a word's frequency to its end node (saturating at INT_MAX, as coccoc does).
  uint32_t add(const std::string& word, int32_t freq) {
    uint32_t node = walk_or_add(to_code_points(word));
    int32_t& f = frequency[node];
    f = f == -1 ? freq : (f < INT_MAX - freq ? f + freq : INT_MAX);
    return node;
  }
};

// A double array's sections, as TrieView reads them.
struct DoubleArray {
  std::vector<TrieCell> cells;
  std::vector<TrieData> data;
  std::vector<uint16_t> code;  // by code point; 0 for one on no edge
};

// The builder's trie as a double array; `weight` and `value` are per builder node.
DoubleArray double_array(const TrieBuilder& trie, const std::vector<float>& weight,
                         const std::vector<int32_t>& value);

}  // namespace electra_fast::vi
