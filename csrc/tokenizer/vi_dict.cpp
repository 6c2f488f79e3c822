#include "vi_dict.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

namespace electra_fast::vi {
namespace {

constexpr char kMagic[8] = {'E', 'F', 'V', 'I', 'D', 'I', 'C', 'T'};
constexpr uint32_t kFormatVersion = 5;
enum Section { kClasses, kWordCells, kWordData, kWordCodes, kSyllableCells, kSyllableData,
               kSyllableCodes, kPairRows, kPairColumn, kPairScore, kSectionCount };

struct Header {
  char magic[8];
  uint32_t version;
  uint32_t options;
  uint64_t fingerprint;  // of the sources' sizes and modification times
  uint64_t offset[kSectionCount];
  uint64_t size[kSectionCount];
};

const char* const kWordSources[] = {"alphabetic", "numeric", "vndic_multiterm", "acronyms",
                                    "chemical_comp", "special_token.strong", "d_and_gi.txt",
                                    "i_and_y.txt"};
const char* const kNontoneSources[] = {"Freq2NontoneUniFile", "nontone_pair_freq"};

std::ifstream open_source(const std::string& dir, const char* name) {
  std::ifstream in(dir + "/" + name, std::ios::binary);
  if (!in) throw std::runtime_error("missing dictionary file " + dir + "/" + name);
  return in;
}

// A trie under construction, with what coccoc keeps per node before it compiles the trie.
struct TrieBuilder {
  std::vector<int32_t> frequency{-1};  // -1: no word ends here
  std::vector<int32_t> space_count{0};
  std::vector<uint8_t> special{0};
  std::vector<int32_t> length{0};
  std::unordered_map<uint64_t, uint32_t> edges;

  uint32_t walk_or_add(const std::vector<uint32_t>& cps) {
    uint32_t node = 0;
    for (uint32_t cp : cps) {
      auto [it, added] = edges.try_emplace(uint64_t(node) << 32 | cp, uint32_t(frequency.size()));
      if (added) {
        frequency.push_back(-1);
        space_count.push_back(0);
        special.push_back(0);
        length.push_back(0);
      }
      node = it->second;
    }
    return node;
  }
  int32_t find(const std::vector<uint32_t>& cps) const {
    uint32_t node = 0;
    for (uint32_t cp : cps) {
      auto it = edges.find(uint64_t(node) << 32 | cp);
      if (it == edges.end()) return -1;
      node = it->second;
    }
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

// Frequencies are parsed as coccoc parses them: the last run of digits on the line, in 32-bit
// arithmetic; the word is everything before the character that precedes that run.
bool split_word_frequency(const std::string& line, std::string& word, int32_t& freq) {
  int i = int(line.size()) - 1;
  while (i >= 0 && !CharTable::is_digit(uint8_t(line[i]))) --i;
  while (i >= 0 && CharTable::is_digit(uint8_t(line[i]))) --i;
  if (i < 0) return false;
  uint32_t value = 0;
  for (size_t k = i + 1; k < line.size() && CharTable::is_digit(uint8_t(line[k])); ++k)
    value = value * 10 + uint32_t(line[k] - '0');
  freq = int32_t(value);
  word = line.substr(0, i);
  return true;
}

std::string map_code_points(const CharTable& chars, const std::string& s, bool root) {
  std::string out;
  for (uint32_t cp : to_code_points(s)) append_utf8(out, root ? chars.lower_root(cp) : chars.lower(cp));
  return out;
}

struct WordTrie {
  TrieBuilder trie;
  std::unordered_map<std::string, std::string> variants;  // syllable -> its other spelling

  // coccoc's multi-term insertion: the end node takes this word's space count and special flag.
  // A spelling variant (never added by coccoc, see DictionaryOptions) gets the same space count,
  // which scores it like the word it spells.
  void add(const std::string& word, int32_t freq, bool with_variant, bool special) {
    uint32_t node = trie.add(word, freq);
    int32_t spaces = int32_t(std::count(word.begin(), word.end(), ' '));
    trie.space_count[node] = spaces;
    trie.special[node] = special;
    if (!with_variant || variants.empty()) return;
    std::string varied, piece;
    std::istringstream parts(word);
    bool first = true;
    while (std::getline(parts, piece, ' ')) {
      auto it = variants.find(piece);
      varied += (first ? "" : " ") + (it == variants.end() ? piece : it->second);
      first = false;
    }
    if (!word.empty() && word.back() == ' ') varied += ' ';
    if (varied != word) trie.space_count[trie.add(varied, freq)] = spaces;
  }
};

float word_weight(int32_t freq, int32_t spaces) {
  // Exponents per number of spaces in the word (0 to 3; coccoc's table has no longer rows).
  static const float kPowers[4][2] = {{0.38f, 1.f}, {0.14f, 2.59f}, {1.42f, 4.42f}, {1.45f, 0.23f}};
  const float* p = kPowers[std::clamp(spaces, 0, 3)];
  return float(std::pow(std::log2(freq + 3.0), double(p[0])) * std::pow(double(spaces + 1), double(p[1])));
}

float syllable_weight(int32_t freq, int32_t length) {
  return float(double(8.68047f) * std::pow(double(length), double(1.49414f)) *
               std::pow(double(freq), double(0.02f)));
}

float pair_weight(int32_t freq, int32_t length) {
  return float(double(0.1f) * std::pow(double(length), double(0.994141f)) *
               std::pow(double(freq), double(0.19f)));
}

// coccoc's variable-length integers: 7 bits per byte, little end first; a byte with the high
// bit clear starts a number, bytes with it set continue it.
struct VarintReader {
  std::vector<char> data;
  size_t pos = 0;
  uint8_t byte(size_t i) const { return uint8_t(data[i]); }
  bool next(uint32_t& out) {
    if (pos >= data.size()) return false;
    uint32_t value = byte(pos++) & 0x7F;
    for (int shift = 7; pos < data.size() && (byte(pos) & 0x80); shift += 7)
      value |= uint32_t(byte(pos++) & 0x7F) << shift;
    out = value;
    return true;
  }
};

std::vector<char> read_all(const std::string& dir, const char* name) {
  auto in = open_source(dir, name);
  return std::vector<char>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

struct DoubleArray {
  std::vector<TrieCell> cells;
  std::vector<TrieData> data;
  std::vector<uint16_t> code;  // by code point; 0 for one on no edge
};

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

// The builder's trie as a double array: nodes placed breadth first, each at the first base where
// all its children's cells are free. `weight` and `value` are per builder node.
DoubleArray double_array(const TrieBuilder& trie, const std::vector<float>& weight,
                         const std::vector<int32_t>& value) {
  struct Edge {
    uint32_t parent, cp, child;
  };
  std::vector<Edge> edges;
  edges.reserve(trie.edges.size());
  for (auto& [key, child] : trie.edges) edges.push_back({uint32_t(key >> 32), uint32_t(key), child});
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

struct Blob {
  std::vector<char> bytes = std::vector<char>(sizeof(Header));  // the header goes first
  Header header{};
  template <class T>
  void put(Section s, const std::vector<T>& v) {
    size_t offset = (bytes.size() + 63) & ~size_t(63);
    bytes.resize(offset + v.size() * sizeof(T));
    if (!v.empty()) std::memcpy(bytes.data() + offset, v.data(), v.size() * sizeof(T));
    header.offset[s] = offset;
    header.size[s] = v.size() * sizeof(T);
  }
};

Blob compile(const std::string& dir, DictionaryOptions options, uint64_t fingerprint) {
  CharTable chars;
  chars.read_classes(dir + "/alphabetic", dir + "/numeric");
  WordTrie words;
  TrieBuilder syllables;
  if (options.spelling_variants) {
    for (const char* name : {"d_and_gi.txt", "i_and_y.txt"}) {
      auto in = open_source(dir, name);
      std::string line, from, to;
      while (std::getline(in, line)) {
        std::istringstream row(line);
        if (row >> from >> to) words.variants[map_code_points(chars, from, false)] = map_code_points(chars, to, false);
      }
    }
  }
  auto add_syllable = [&](const std::string& s, int32_t freq) {
    syllables.length[syllables.add(s, freq)] = int32_t(to_code_points(s).size());
  };
  {
    auto in = open_source(dir, "vndic_multiterm");
    std::string line, word;
    int32_t freq;
    while (std::getline(in, line)) {
      if (!split_word_frequency(line, word, freq)) continue;
      words.add(word, freq, true, false);
      std::string root = map_code_points(chars, word, true);
      if (root != word) words.add(root, freq, false, false);
      if (!options.load_nontone_data) continue;
      // Every piece between spaces is a syllable, an empty one included, as in coccoc.
      size_t start = 0;
      for (size_t k = 0; k <= word.size(); ++k) {
        if (k < word.size() && word[k] != ' ') continue;
        std::string piece = word.substr(start, k - start);
        start = k + 1;
        if (k == word.size() && piece.empty()) break;
        add_syllable(piece, freq);
        std::string piece_root = map_code_points(chars, piece, true);
        if (piece_root != piece) add_syllable(piece_root, freq);
      }
    }
  }
  for (const char* unit : {"m2", "m3", "km2"}) words.add(unit, INT_MAX, false, false);
  {
    auto in = open_source(dir, "acronyms");
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream row(line);
      std::string word;
      int32_t freq = 0;
      row >> word >> freq;
      words.add(word, freq, false, false);
      if (options.load_nontone_data) add_syllable(word, freq);
    }
  }
  {
    auto in = open_source(dir, "chemical_comp");
    std::string term;
    while (in >> term) words.add(term, INT_MAX, false, true);
  }
  for (const char* term : {"vietnam+", "google+", "notepad++", "c#", "c++", "g++", "xbase++", "vc++",
                           "k+", "g+", "16+", "18+"})
    words.add(term, INT_MAX, false, true);
  {
    auto in = open_source(dir, "special_token.strong");
    std::string term;
    while (in >> term) words.add(term, INT_MAX, false, true);
  }

  Blob blob;
  std::memcpy(blob.header.magic, kMagic, sizeof kMagic);
  blob.header.version = kFormatVersion;
  blob.header.options = options.load_nontone_data | (options.spelling_variants << 1);
  blob.header.fingerprint = fingerprint;
  blob.put(kClasses, chars.classes);
  const TrieBuilder& w = words.trie;
  std::vector<float> weight(w.frequency.size());
  std::vector<int32_t> flags(w.frequency.size());
  for (size_t n = 0; n < weight.size(); ++n) {
    bool ending = w.frequency[n] != -1;
    weight[n] = ending ? word_weight(w.frequency[n], w.space_count[n]) : 0.5f;
    flags[n] = (ending ? TrieView::kEnding : 0) | (w.special[n] ? TrieView::kSpecial : 0);
  }
  DoubleArray word_trie = double_array(w, weight, flags);
  blob.put(kWordCells, word_trie.cells);
  blob.put(kWordData, word_trie.data);
  blob.put(kWordCodes, word_trie.code);
  if (!options.load_nontone_data) return blob;

  std::vector<float> syllable_weights(syllables.frequency.size());
  for (size_t n = 0; n < syllable_weights.size(); ++n)
    syllable_weights[n] = syllables.frequency[n] != -1
                              ? syllable_weight(syllables.frequency[n], syllables.length[n])
                              : 0.5f;
  // Syllable indices come from the order of Freq2NontoneUniFile; one not in the trie keeps
  // length 0 for the pair scores, as in coccoc.
  std::vector<int32_t> index(syllables.frequency.size(), -1);
  std::vector<int32_t> syllable_length;
  {
    auto in = open_source(dir, "Freq2NontoneUniFile");
    std::string s;
    while (in >> s) {
      auto cps = to_code_points(s);
      int32_t node = syllables.find(cps);
      if (node >= 0) index[node] = int32_t(syllable_length.size());
      syllable_length.push_back(node >= 0 ? int32_t(cps.size()) : 0);
    }
  }
  VarintReader reader{read_all(dir, "nontone_pair_freq")};
  uint32_t rows = 0;
  reader.next(rows);
  if (rows != syllable_length.size())
    throw std::runtime_error("nontone_pair_freq has " + std::to_string(rows) +
                             " rows but Freq2NontoneUniFile has " +
                             std::to_string(syllable_length.size()) + " syllables");
  std::vector<uint32_t> row_start{0}, column;
  std::vector<float> score;
  for (uint32_t first = 0; first < rows; ++first) {
    uint32_t count = 0, second = 0, delta, freq;
    reader.next(count);
    for (uint32_t k = 0; k < count && reader.next(delta) && reader.next(freq); ++k) {
      second += delta;
      if (second >= rows) continue;
      float s = pair_weight(int32_t(freq), syllable_length[first] + syllable_length[second]);
      if (column.size() > row_start.back() && column.back() == second) {
        score.back() = s;  // a repeated pair: the last one counts
      } else {
        column.push_back(second);
        score.push_back(s);
      }
    }
    row_start.push_back(uint32_t(column.size()));
  }
  DoubleArray syllable_trie = double_array(syllables, syllable_weights, index);
  blob.put(kSyllableCells, syllable_trie.cells);
  blob.put(kSyllableData, syllable_trie.data);
  blob.put(kSyllableCodes, syllable_trie.code);
  blob.put(kPairRows, row_start);
  blob.put(kPairColumn, column);
  blob.put(kPairScore, score);
  return blob;
}

uint64_t fingerprint_sources(const std::string& dir, bool nontone) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](uint64_t v) { h = (h ^ v) * 1099511628211ull; };
  auto stat_one = [&](const char* name) {
    struct stat st {};
    if (::stat((dir + "/" + name).c_str(), &st) != 0)
      throw std::runtime_error("missing dictionary file " + dir + "/" + name);
    mix(uint64_t(st.st_size));
    mix(uint64_t(st.st_mtim.tv_sec) * 1000000000ull + uint64_t(st.st_mtim.tv_nsec));
  };
  for (const char* name : kWordSources) stat_one(name);
  if (nontone)
    for (const char* name : kNontoneSources) stat_one(name);
  return h;
}

}  // namespace

bool PairView::find(int32_t first, int32_t second, float& out) const {
  if (first < 0 || uint32_t(first) >= rows) return false;
  const uint32_t* begin = column + row_start[first];
  const uint32_t* end = column + row_start[first + 1];
  const uint32_t* it = std::lower_bound(begin, end, uint32_t(second));
  if (it == end || *it != uint32_t(second)) return false;
  out = score[it - column];
  return true;
}

Dictionary::~Dictionary() {
  if (map_ != nullptr) munmap(map_, mapped_bytes);
}

void Dictionary::attach(const char* data, size_t size) {
  Header header;
  if (size < sizeof header) throw std::runtime_error("compiled dictionary is truncated");
  std::memcpy(&header, data, sizeof header);
  for (int s = 0; s < kSectionCount; ++s)
    if (header.offset[s] + header.size[s] > size)
      throw std::runtime_error("compiled dictionary is truncated");
  auto at = [&](Section s) { return data + header.offset[s]; };
  if (header.size[kClasses] != kTableSize) throw std::runtime_error("compiled dictionary is corrupt");
  std::memcpy(chars.classes.data(), at(kClasses), kTableSize);
  auto trie = [&](Section cells, Section data, Section codes) {
    TrieView view;
    if (header.size[cells] == 0 || header.size[codes] == 0) return view;  // absent: no nontone data
    view.cells = uint32_t(header.size[cells] / sizeof(TrieCell));
    if (header.size[data] != view.cells * sizeof(TrieData))
      throw std::runtime_error("compiled dictionary is corrupt");
    view.cell = reinterpret_cast<const TrieCell*>(at(cells));
    view.data = reinterpret_cast<const TrieData*>(at(data));
    view.code = reinterpret_cast<const uint16_t*>(at(codes));
    view.code_span = uint32_t(header.size[codes] / sizeof(uint16_t));
    return view;
  };
  words = trie(kWordCells, kWordData, kWordCodes);
  syllables = trie(kSyllableCells, kSyllableData, kSyllableCodes);
  if (header.size[kPairRows] >= 2 * sizeof(uint32_t)) {
    pairs.rows = uint32_t(header.size[kPairRows] / sizeof(uint32_t) - 1);
    pairs.row_start = reinterpret_cast<const uint32_t*>(at(kPairRows));
    pairs.column = reinterpret_cast<const uint32_t*>(at(kPairColumn));
    pairs.score = reinterpret_cast<const float*>(at(kPairScore));
  }
}

std::shared_ptr<const Dictionary> Dictionary::open(const std::string& dir, DictionaryOptions options) {
  uint64_t fingerprint = fingerprint_sources(dir, options.load_nontone_data);
  std::string kind = std::string(options.load_nontone_data ? "-nontone" : "-tone") +
                     (options.spelling_variants ? "-variants" : "") + ".bin";
  auto path_of = [&](uint32_t version) { return dir + "/compiled-v" + std::to_string(version) + kind; };
  std::string path = path_of(kFormatVersion);
  auto map_file = [&]() -> std::shared_ptr<Dictionary> {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return nullptr;
    struct stat st {};
    Header header{};
    bool ok = fstat(fd, &st) == 0 && size_t(st.st_size) >= sizeof header &&
              pread(fd, &header, sizeof header, 0) == ssize_t(sizeof header) &&
              std::memcmp(header.magic, kMagic, sizeof kMagic) == 0 &&
              header.version == kFormatVersion && header.fingerprint == fingerprint;
    void* map = ok ? mmap(nullptr, size_t(st.st_size), PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
    ::close(fd);
    if (map == MAP_FAILED) return nullptr;
    std::shared_ptr<Dictionary> dict(new Dictionary());
    dict->map_ = map;
    dict->mapped_bytes = size_t(st.st_size);
    dict->compiled_path = path;
    try {
      dict->attach(static_cast<const char*>(map), dict->mapped_bytes);
    } catch (const std::runtime_error&) {
      return nullptr;  // damaged: compiled again below, and replaced
    }
    return dict;
  };
  if (auto dict = map_file()) return dict;

  Blob blob = compile(dir, options, fingerprint);
  std::memcpy(blob.bytes.data(), &blob.header, sizeof blob.header);
  // Written under a temporary name and renamed, so that an interrupted compile never leaves a
  // partial file where a later open would find it.
  std::string tmp = path + ".tmp." + std::to_string(getpid());
  if (FILE* f = std::fopen(tmp.c_str(), "wb")) {
    bool ok = std::fwrite(blob.bytes.data(), 1, blob.bytes.size(), f) == blob.bytes.size();
    ok = (std::fflush(f) == 0) && ok && fsync(fileno(f)) == 0;
    ok = (std::fclose(f) == 0) && ok && std::rename(tmp.c_str(), path.c_str()) == 0;
    if (!ok) std::remove(tmp.c_str());
    if (ok) {
      // Earlier formats of the same dictionary are dead weight (hundreds of MB) from here on.
      for (uint32_t version = 1; version < kFormatVersion; ++version) std::remove(path_of(version).c_str());
      if (auto dict = map_file()) return dict;
    }
  }
  std::shared_ptr<Dictionary> dict(new Dictionary());
  dict->owned_ = std::move(blob.bytes);
  dict->attach(dict->owned_.data(), dict->owned_.size());
  return dict;
}

}  // namespace electra_fast::vi
