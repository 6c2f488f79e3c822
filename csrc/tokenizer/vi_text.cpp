#include "vi_text.h"

#include <fstream>
#include <sstream>
#include <stdexcept>

namespace electra_fast::vi {
namespace {

// The twelve Vietnamese vowels, each with its six tones in the order of the tone columns
// below: none, acute (sắc), grave (huyền), hook (hỏi), tilde (ngã), dot below (nặng).
const char* const kToneRowsLower[12] = {
    "aáàảãạ", "âấầẩẫậ", "ăắằẳẵặ", "eéèẻẽẹ", "êếềểễệ", "iíìỉĩị",
    "oóòỏõọ", "ôốồổỗộ", "ơớờởỡợ", "uúùủũụ", "ưứừửữự", "yýỳỷỹỵ"};
const char* const kToneRowsUpper[12] = {
    "AÁÀẢÃẠ", "ÂẤẦẨẪẬ", "ĂẮẰẲẴẶ", "EÉÈẺẼẸ", "ÊẾỀỂỄỆ", "IÍÌỈĨỊ",
    "OÓÒỎÕỌ", "ÔỐỒỔỖỘ", "ƠỚỜỞỠỢ", "UÚÙỦŨỤ", "ƯỨỪỬỮỰ", "YÝỲỶỸỴ"};
// Combining marks: the tones (columns 1..5 of the rows above) and the vowel marks.
constexpr uint32_t kToneMarks[6] = {0, 0x301, 0x300, 0x309, 0x303, 0x323};
constexpr uint32_t kCircumflex = 0x302, kBreve = 0x306, kHorn = 0x31B;
// Which letter of the tone rows (by row) a vowel mark turns a plain vowel into, per family:
// {plain, with circumflex, with breve, with horn}; a mark the vowel does not take leaves it.
constexpr int kHatFamilies[4][4] = {{0, 1, 2, 0}, {3, 4, 3, 3}, {6, 7, 6, 8}, {9, 9, 9, 10}};
// The letter that each tone row reduces to without tone and marks.
constexpr char kRowRoot[12] = {'a', 'a', 'a', 'e', 'e', 'i', 'o', 'o', 'o', 'u', 'u', 'y'};

}  // namespace

std::vector<uint32_t> to_code_points(std::string_view s) {
  std::vector<uint32_t> out;
  out.reserve(s.size());
  auto* p = reinterpret_cast<const unsigned char*>(s.data());
  for (size_t i = 0; i < s.size();) out.push_back(decode_utf8(p, s.size(), i));
  return out;
}

CharTable::CharTable()
    : classes(kTableSize, 0),
      lower_of(kTableSize),
      root_of(kTableSize),
      tone_row_(kTableSize, -1),
      hat_row_(kTableSize, -1) {
  for (uint32_t c = 0; c < kTableSize; ++c) lower_of[c] = c;
  for (uint32_t c = 'A'; c <= 'Z'; ++c) lower_of[c] = c - 'A' + 'a';
  std::vector<std::vector<uint32_t>> rows_lower, rows_upper;
  for (int r = 0; r < 12; ++r) {
    rows_lower.push_back(to_code_points(kToneRowsLower[r]));
    rows_upper.push_back(to_code_points(kToneRowsUpper[r]));
    for (int t = 0; t < 6; ++t) lower_of[rows_upper[r][t]] = rows_lower[r][t];
  }
  lower_of[0x110] = 0x111;  // Đ -> đ
  lower_of[0xD0] = 0x111;   // Ð (eth), which Vietnamese text uses for Đ
  for (uint32_t c = 0; c < kTableSize; ++c) root_of[c] = lower_of[c];
  for (int r = 0; r < 12; ++r)
    for (int t = 0; t < 6; ++t) root_of[rows_lower[r][t]] = root_of[rows_upper[r][t]] = kRowRoot[r];
  root_of[0x111] = root_of[0x110] = root_of[0xD0] = 'd';

  tone_table_ = rows_lower;
  for (int r = 0; r < 12; ++r) tone_row_[rows_lower[r][0]] = int8_t(r);
  // One hat row per (tone, family), headed by the family's plain vowel with that tone.
  for (int t = 0; t < 6; ++t)
    for (auto& family : kHatFamilies) {
      std::vector<uint32_t> row;
      for (int k = 0; k < 4; ++k) row.push_back(rows_lower[family[k]][t]);
      hat_row_[row[0]] = int8_t(hat_table_.size());
      hat_table_.push_back(row);
    }
}

int CharTable::tone_column(uint32_t mark) const {
  for (int t = 1; t < 6; ++t)
    if (kToneMarks[t] == mark) return t;
  return -1;
}

int CharTable::hat_column(uint32_t mark) const {
  return mark == kCircumflex ? 1 : mark == kBreve ? 2 : mark == kHorn ? 3 : -1;
}

bool CharTable::merge_mark(uint32_t& base, uint32_t mark) const {
  if (base >= kTableSize || mark >= kTableSize) return false;
  int column;
  if (tone_row_[base] >= 0 && (column = tone_column(mark)) >= 0) {
    base = tone_table_[tone_row_[base]][column];
    return true;
  }
  if (hat_row_[base] >= 0 && (column = hat_column(mark)) >= 0) {
    base = hat_table_[hat_row_[base]][column];
    return true;
  }
  return false;
}

namespace {

std::ifstream open_or_throw(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open dictionary file " + path);
  return in;
}

}  // namespace

void CharTable::read_classes(const std::string& alphabetic_path, const std::string& numeric_path) {
  // coccoc reads the count with `>>` and then that many lines with getline, the first of which
  // is the rest of the count's own line: the last row of `alphabetic` is never read. We read the
  // same rows so that the same characters count as letters.
  auto in = open_or_throw(alphabetic_path);
  int n = 0;
  in >> n;
  std::string line;
  for (int k = 0; k < n && std::getline(in, line); ++k) {
    std::istringstream row(line);
    std::string upper, lower;
    uint32_t upper_cp, lower_cp;
    if (row >> upper >> upper_cp >> lower >> lower_cp) {
      if (upper_cp >= kTableSize || lower_cp >= kTableSize) continue;
      classes[upper_cp] |= kAlphabetic;
      classes[lower_cp] |= kAlphabetic;
    }
  }
  auto numeric = open_or_throw(numeric_path);
  numeric >> n;
  for (int k = 0; k < n; ++k) {
    std::string upper, lower;
    uint32_t upper_cp, lower_cp;
    if (!(numeric >> upper >> upper_cp >> lower >> lower_cp)) break;
    if (upper_cp >= kTableSize || lower_cp >= kTableSize) continue;
    classes[upper_cp] |= kNumeric;
    classes[lower_cp] |= kNumeric;
  }
}

}  // namespace electra_fast::vi
