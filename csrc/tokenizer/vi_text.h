// Characters as coccoc's segmenter sees them: which code points are letters and digits, how
// text is lower-cased for matching, and how combining tone and vowel marks merge into the
// precomposed letter before them. No Python and no torch here.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace electra_fast::vi {

// coccoc's character tables cover the Basic Multilingual Plane only: a code point above it is
// never a letter or a digit and lower-cases to itself.
constexpr uint32_t kTableSize = 1u << 16;

enum CharClass : uint8_t { kAlphabetic = 1, kNumeric = 2 };

// The per-code-point tables that the dictionaries define (kept in the compiled file) and the
// ones that are fixed (lower-casing, tone and vowel-mark merging, built in the constructor).
struct CharTable {
  std::vector<uint8_t> classes;      // kTableSize entries: kAlphabetic | kNumeric
  std::vector<uint32_t> lower_of;    // kTableSize entries
  std::vector<uint32_t> root_of;     // kTableSize: lower-cased letter without tone or marks

  CharTable();
  // Reads coccoc's `alphabetic` and `numeric` files (a count, then "UPPER cp lower cp" rows).
  void read_classes(const std::string& alphabetic_path, const std::string& numeric_path);

  bool is_alnum(uint32_t c) const { return c < kTableSize && classes[c] != 0; }
  bool is_alpha(uint32_t c) const { return c < kTableSize && (classes[c] & kAlphabetic); }
  static bool is_digit(uint32_t c) { return c >= '0' && c <= '9'; }
  uint32_t lower(uint32_t c) const { return c < kTableSize ? lower_of[c] : c; }
  uint32_t lower_root(uint32_t c) const { return c < kTableSize ? root_of[c] : c; }
  // If `mark` is a combining tone or vowel mark that combines with `base`, replaces `base` by
  // the precomposed letter and returns true.
  bool merge_mark(uint32_t& base, uint32_t mark) const;
  // False for every code point that merge_mark can never merge (all but U+0300..U+0323): the
  // cheap test that keeps the per-character path short.
  static bool may_be_mark(uint32_t c) { return c - 0x300u <= 0x23u; }

 private:
  // tone_row_[c]: row of the tone table whose toneless letter is c; tone_mark_[mark]: column.
  std::vector<int8_t> tone_row_, hat_row_;
  std::vector<std::vector<uint32_t>> tone_table_, hat_table_;
  int tone_column(uint32_t mark) const;
  int hat_column(uint32_t mark) const;
};

// Lenient UTF-8: a well-formed sequence gives its code point; any other byte stands alone as
// U+FFFD, so that every input, valid or not, is consumed byte by byte without reading past it.
inline uint32_t decode_utf8(const unsigned char* s, size_t n, size_t& i) {
  unsigned char b = s[i];
  if (b < 0x80) {
    ++i;
    return b;
  }
  int extra = (b >> 5) == 0x6 ? 1 : (b >> 4) == 0xE ? 2 : (b >> 3) == 0x1E ? 3 : -1;
  if (extra < 0 || i + extra >= n) {
    ++i;
    return 0xFFFD;
  }
  uint32_t cp = b & (0x3F >> extra);
  for (int k = 1; k <= extra; ++k) {
    if ((s[i + k] & 0xC0) != 0x80) {
      ++i;
      return 0xFFFD;
    }
    cp = (cp << 6) | (s[i + k] & 0x3F);
  }
  i += extra + 1;
  return cp;
}

inline void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

std::vector<uint32_t> to_code_points(std::string_view s);

}  // namespace electra_fast::vi
