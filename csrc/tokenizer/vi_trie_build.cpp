#include "vi_trie_build.h"

#include <algorithm>
#include <stdexcept>

namespace electra_fast::vi {
namespace {

// Free cells of a double array under construction: next_free[i] leads to the first cell at or
// after i that may still take a node's first child (a union-find with path compression, so that
// a scan skips the dense part of the array in a step or two).
struct FreeCells {
  std::vector<uint32_t> next_free;
  std::vector<uint8_t> used, failures;

  void grow(size_t size) {
    if (size <= next_free.size()) return;
    for (size_t i = next_free.size(); i < size; ++i) next_free.push_back(uint32_t(i));
    used.resize(size, 0);
    failures.resize(size, 0);
  }
  bool is_free(size_t i) const { return i >= used.size() || !used[i]; }
  uint32_t find(uint32_t i) {
    uint32_t root = i;
    while (root < next_free.size() && next_free[root] != root) root = next_free[root];
    if (root >= next_free.size()) grow(size_t(root) + 1);
    while (i != root) {
      uint32_t next = next_free[i];
      next_free[i] = root;
      i = next;
    }
    return root;
  }
  // A cell is no longer a place to try a first child: it is taken, or it failed often enough
  // that trying it again is not worth the time (it still takes later children).
  void retire(uint32_t i) { next_free[i] = i + 1; }
  void take(uint32_t i) {
    grow(size_t(i) + 1);
    used[i] = 1;
    retire(i);
  }
};

}  // namespace

// Nodes are placed breadth first, each at the first base where all its children's cells are
// free.
DoubleArray double_array(const TrieBuilder& trie, const std::vector<float>& weight,
                         const std::vector<int32_t>& value) {
  struct Edge {
    uint32_t parent, cp, child;
  };
  std::vector<Edge> edges;
  edges.reserve(trie.edges.size());
  trie.edges.for_each([&](uint64_t key, uint32_t child) {
    edges.push_back({uint32_t(key >> 32), uint32_t(key), child});
  });
  std::sort(edges.begin(), edges.end(),
            [](const Edge& a, const Edge& b) { return a.parent != b.parent ? a.parent < b.parent : a.cp < b.cp; });
  size_t count = trie.frequency.size();
  std::vector<uint32_t> edges_from(count + 1, 0);  // by builder node, into `edges`
  for (const Edge& e : edges) ++edges_from[e.parent + 1];
  for (size_t n = 0; n < count; ++n) edges_from[n + 1] += edges_from[n];

  DoubleArray out;
  std::vector<uint32_t> points;
  for (const Edge& e : edges) points.push_back(e.cp);
  std::sort(points.begin(), points.end());
  points.erase(std::unique(points.begin(), points.end()), points.end());
  if (points.size() >= UINT16_MAX)
    throw std::runtime_error("a dictionary uses too many distinct characters");
  out.code.assign(points.empty() ? 1 : points.back() + 1, 0);
  for (size_t k = 0; k < points.size(); ++k) out.code[points[k]] = uint16_t(k + 1);
  const uint32_t alphabet = uint32_t(points.size());

  FreeCells slots;
  slots.grow(count + alphabet + 1);
  slots.take(0);
  std::vector<TrieCell> cells(1, TrieCell{0, -1});
  std::vector<TrieData> data(1, TrieData{weight[0], value[0]});
  // (builder node, cell) pairs in breadth-first order; the root is in cell 0.
  std::vector<std::pair<uint32_t, uint32_t>> queue{{0, 0}};
  std::vector<uint32_t> codes;
  for (size_t q = 0; q < queue.size(); ++q) {
    auto [node, at] = queue[q];
    uint32_t first = edges_from[node], last = edges_from[node + 1];
    if (first == last) continue;
    codes.clear();
    for (uint32_t e = first; e < last; ++e) codes.push_back(out.code[edges[e].cp]);
    uint32_t base = 0;
    for (uint32_t p = slots.find(codes[0]);; p = slots.find(p + 1)) {
      base = p - codes[0];
      bool fits = true;
      for (size_t k = 1; k < codes.size() && fits; ++k) fits = slots.is_free(base + codes[k]);
      if (fits) break;
      if (++slots.failures[p] >= 16) slots.retire(p);
    }
    if (base > uint32_t(INT32_MAX) - alphabet) throw std::runtime_error("dictionary too large");
    size_t end = size_t(base) + codes.back() + 1;
    if (cells.size() < end) {
      cells.resize(end, TrieCell{0, -1});
      data.resize(end, TrieData{0.f, 0});
    }
    cells[at].base = int32_t(base);
    for (uint32_t e = first; e < last; ++e) {
      uint32_t c = base + out.code[edges[e].cp];
      slots.take(c);
      uint32_t child = edges[e].child;
      cells[c] = TrieCell{0, int32_t(at)};
      data[c] = TrieData{weight[child], value[child]};
      queue.emplace_back(child, c);
    }
  }
  out.cells = std::move(cells);
  out.data = std::move(data);
  return out;
}

}  // namespace electra_fast::vi
