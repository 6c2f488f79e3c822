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
#include <exception>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <unordered_map>

#include "vi_trie_build.h"

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

// coccoc's score of a syllable pair, for the 24.6 million pairs of the real file. Their lengths
// and frequencies take few distinct values, so each power is taken once per value and kept (the
// same doubles, so the same floats) instead of two pow calls a pair.
class PairWeights {
 public:
  float operator()(int32_t freq, int32_t length) {
    return float(double(0.1f) * power(by_length_, length, double(0.994141f)) *
                 power(by_freq_, freq, double(0.19f)));
  }

 private:
  static constexpr int32_t kKept = 1 << 16;
  static double power(std::vector<double>& kept, int32_t x, double exponent) {
    if (x < 0 || x >= kKept) return std::pow(double(x), exponent);
    if (kept.empty()) kept.assign(kKept, -1.0);  // -1: not computed (every power is >= 0)
    double& p = kept[size_t(x)];
    if (p < 0) p = std::pow(double(x), exponent);
    return p;
  }
  std::vector<double> by_length_, by_freq_;
};

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

// The compiled file in the making: its header, then its sections at offsets aligned to 64
// bytes. Each section is kept as it was built (moved in, not copied: the file is 240 MB) until
// it is written.
struct Blob {
  Header header{};
  struct Part {
    uint64_t offset;
    const char* data;
    size_t size;
  };
  std::vector<Part> parts;
  std::vector<std::shared_ptr<const void>> held;
  uint64_t end = sizeof(Header);

  template <class T>
  void put(Section s, std::vector<T> section) {
    auto kept = std::make_shared<const std::vector<T>>(std::move(section));
    uint64_t offset = (end + 63) & ~uint64_t(63);
    size_t size = kept->size() * sizeof(T);
    header.offset[s] = offset;
    header.size[s] = size;
    parts.push_back({offset, reinterpret_cast<const char*>(kept->data()), size});
    held.push_back(kept);
    end = offset + size;
  }
  bool write(FILE* f) const {
    static const char zeros[64] = {};
    if (std::fwrite(&header, sizeof header, 1, f) != 1) return false;
    uint64_t at = sizeof header;
    for (const Part& part : parts) {
      size_t gap = size_t(part.offset - at);
      if (std::fwrite(zeros, 1, gap, f) != gap) return false;
      if (std::fwrite(part.data, 1, part.size, f) != part.size) return false;
      at = part.offset + part.size;
    }
    return true;
  }
  std::vector<char> bytes() const {
    std::vector<char> out(end, 0);
    std::memcpy(out.data(), &header, sizeof header);
    for (const Part& part : parts)
      if (part.size != 0) std::memcpy(out.data() + part.offset, part.data, part.size);
    return out;
  }
};

// nontone_pair_freq as read: for each first syllable, its second syllables in order and the
// frequency of each pair (the last of a repeated pair counts, as in coccoc). Scores need the
// syllables' lengths, known only once the syllable trie is built; reading comes first so that
// it can run beside that.
struct PairCounts {
  uint32_t rows = 0;
  std::vector<uint32_t> row_start{0}, column, freq;
};

PairCounts read_pair_counts(const std::string& dir) {
  VarintReader reader{read_all(dir, "nontone_pair_freq")};
  PairCounts out;
  reader.next(out.rows);
  // Every pair takes two bytes at least; the untouched part of the reservation costs nothing.
  out.column.reserve(reader.data.size() / 2);
  out.freq.reserve(reader.data.size() / 2);
  for (uint32_t first = 0; first < out.rows; ++first) {
    uint32_t count = 0, second = 0, delta, freq;
    reader.next(count);
    for (uint32_t k = 0; k < count && reader.next(delta) && reader.next(freq); ++k) {
      second += delta;
      if (second >= out.rows) continue;
      if (out.column.size() > out.row_start.back() && out.column.back() == second) {
        out.freq.back() = freq;  // a repeated pair: the last one counts
      } else {
        out.column.push_back(second);
        out.freq.push_back(freq);
      }
    }
    out.row_start.push_back(uint32_t(out.column.size()));
  }
  return out;
}

Blob compile(const std::string& dir, DictionaryOptions options, uint64_t fingerprint) {
  // The pair file (67 MB of varints) is read on a second thread while the tries are built.
  PairCounts pair_counts;
  std::exception_ptr pair_failure;
  std::thread pair_reader;
  struct JoinOnExit {
    std::thread& thread;
    ~JoinOnExit() {
      if (thread.joinable()) thread.join();
    }
  } join_on_exit{pair_reader};
  if (options.load_nontone_data) {
    pair_reader = std::thread([&] {
      try {
        pair_counts = read_pair_counts(dir);
      } catch (...) {
        pair_failure = std::current_exception();
      }
    });
  }
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
  blob.put(kWordCells, std::move(word_trie.cells));
  blob.put(kWordData, std::move(word_trie.data));
  blob.put(kWordCodes, std::move(word_trie.code));
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
  pair_reader.join();
  if (pair_failure) std::rethrow_exception(pair_failure);
  PairCounts& pc = pair_counts;
  if (pc.rows != syllable_length.size())
    throw std::runtime_error("nontone_pair_freq has " + std::to_string(pc.rows) +
                             " rows but Freq2NontoneUniFile has " +
                             std::to_string(syllable_length.size()) + " syllables");
  std::vector<float> score(pc.freq.size());
  PairWeights weights;
  for (uint32_t first = 0; first < pc.rows; ++first)
    for (uint32_t k = pc.row_start[first]; k < pc.row_start[first + 1]; ++k)
      score[k] = weights(int32_t(pc.freq[k]),
                         syllable_length[first] + syllable_length[pc.column[k]]);
  std::vector<uint32_t>().swap(pc.freq);
  DoubleArray syllable_trie = double_array(syllables, syllable_weights, index);
  blob.put(kSyllableCells, std::move(syllable_trie.cells));
  blob.put(kSyllableData, std::move(syllable_trie.data));
  blob.put(kSyllableCodes, std::move(syllable_trie.code));
  blob.put(kPairRows, std::move(pc.row_start));
  blob.put(kPairColumn, std::move(pc.column));
  blob.put(kPairScore, std::move(score));
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
  // Written under a temporary name and renamed, so that an interrupted compile never leaves a
  // partial file where a later open would find it.
  std::string tmp = path + ".tmp." + std::to_string(getpid());
  if (FILE* f = std::fopen(tmp.c_str(), "wb")) {
    bool ok = blob.write(f);
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
  dict->owned_ = blob.bytes();
  dict->attach(dict->owned_.data(), dict->owned_.size());
  return dict;
}

}  // namespace electra_fast::vi
