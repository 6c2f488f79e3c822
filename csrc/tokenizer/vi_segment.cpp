#include "vi_segment.h"

#include <algorithm>
#include <array>
#include <climits>
#include <stdexcept>

namespace electra_fast::vi {

enum SegType : uint8_t { kOther = 0, kSkip = 1, kUrlPart = 2, kUrlEnd = 3 };

struct Segmenter::Token {
  int start, end;  // [start, end) in the normalised text
  uint8_t type = kWord, seg = kOther;
  bool in_url() const { return seg == kUrlPart || seg == kUrlEnd; }
};

// The next place a word starting at `from` may end, and its score.
struct Segmenter::Candidate {
  int right = -1;  // -1: none
  double weight = 0.5;
  bool has_more = false;  // the walk stopped at a space inside a longer dictionary entry
  bool special = false;
};

// Where the dictionary walk from `from` stands between calls of next_candidate.
struct Segmenter::Walk {
  int32_t node = 0;
  int last_delimiter = -1;
  bool numeric_prefix = false;
  bool in_dict = true;
};

namespace {

struct Normalised {
  std::vector<uint32_t> text;  // lower-cased, marks merged
  // Size text + 1: where each character starts. 32 bits (segment refuses longer text), as both
  // are written for every character.
  std::vector<int32_t> byte_at, char_at;
};

Normalised normalise(const CharTable& chars, std::string_view utf8) {
  // Sized for the worst case (one character a byte) and cut to length at the end: no
  // capacity checks in the per-character loop.
  Normalised out;
  out.text.resize(utf8.size());
  out.byte_at.resize(utf8.size() + 1);
  out.char_at.resize(utf8.size() + 1);
  auto* p = reinterpret_cast<const unsigned char*>(utf8.data());
  int32_t chars_seen = 0;
  size_t k = 0;
  for (size_t i = 0; i < utf8.size(); ++chars_seen) {
    size_t at = i;
    uint32_t cp = p[i] < 0x80 ? chars.lower(p[i++]) : chars.lower(decode_utf8(p, utf8.size(), i));
    if (CharTable::may_be_mark(cp) && k > 0 && chars.merge_mark(out.text[k - 1], cp)) continue;
    out.text[k] = cp;
    out.byte_at[k] = int32_t(at);
    out.char_at[k++] = chars_seen;
  }
  out.text.resize(k);
  out.byte_at[k] = int32_t(utf8.size());
  out.char_at[k] = chars_seen;
  out.byte_at.resize(k + 1);
  out.char_at.resize(k + 1);
  return out;
}

bool matches_ascii(const std::vector<uint32_t>& t, const char* s, size_t from) {
  for (size_t k = 0; s[k]; ++k)
    if (from + k >= t.size() || t[from + k] != uint32_t(uint8_t(s[k]))) return false;
  return true;
}

bool in_list(const uint32_t* t, int from, int to, std::initializer_list<const char*> list) {
  for (const char* s : list) {
    int k = 0;
    while (s[k] && from + k < to && t[from + k] == uint32_t(uint8_t(s[k]))) ++k;
    if (!s[k] && from + k == to) return true;
  }
  return false;
}

}  // namespace

Segmenter::Candidate Segmenter::next_candidate(const uint32_t* t, int n, int from, Walk& w) const {
  const CharTable& chars = dict_->chars;
  const TrieView& words = dict_->words;
  auto ending = [&](int32_t node) { return (words.flags(node) & TrieView::kEnding) != 0; };
  auto here = [&](int right, bool more) {
    return Candidate{right, double(words.weight(w.node)), more,
                     (words.flags(w.node) & TrieView::kSpecial) != 0};
  };
  auto run_of_alnum = [&](int i) {
    while (i < n && chars.is_alnum(t[i])) ++i;
    return i;
  };
  for (int i = from; i <= n; ++i) {
    if (i != from && !chars.is_alnum(t[i - 1])) w.last_delimiter = i - 1;
    int32_t next = (w.in_dict && i < n) ? words.child(w.node, t[i]) : -1;
    if (next >= 0) {
      // A space inside a dictionary entry: a word may end here, and a longer one may follow.
      if (t[i] == ' ' && i != from) return here(i, true);
      if (!CharTable::is_digit(t[i]))
        w.numeric_prefix = false;
      else if (i == from)
        w.numeric_prefix = true;
      w.node = next;
      continue;
    }
    w.in_dict = false;
    if (w.numeric_prefix) {
      if (i == n) return here(i, false);
      while (i < n && CharTable::is_digit(t[i])) ++i;
      // Decimal and grouped numbers: 3.5, 99,99, 1.000.000
      while (i + 1 < n && (t[i] == ',' || t[i] == '.') && CharTable::is_digit(t[i + 1])) {
        ++i;
        while (i < n && CharTable::is_digit(t[i])) ++i;
      }
      if (i < n && chars.is_alpha(t[i])) {
        if (i != from) return Candidate{i, 0.5, true};
        int till = run_of_alnum(i + 1);
        return Candidate{till, 0.5 + std::max(0, till - i - 2) * 0.25};
      }
      return Candidate{i};
    }
    if (i == n || !chars.is_alnum(t[i])) {
      if (i == from) continue;
      if (ending(w.node) || w.last_delimiter == -1) return here(i, false);
      return here(w.last_delimiter, false);
    }
    // A dictionary word of more than two characters followed by a digit ends here.
    if (i - from > 2 && ending(w.node) && chars.is_alpha(t[i - 1]) && !chars.is_alpha(t[i]))
      return here(i, false);
    if (w.last_delimiter == -1) return Candidate{run_of_alnum(i)};
    if (t[w.last_delimiter] != ' ') {
      if (ending(w.node)) return here(i, false);
      return Candidate{run_of_alnum(i)};
    }
    return Candidate{};
  }
  return Candidate{};
}

namespace {

uint8_t token_type(const CharTable& chars, const uint32_t* t, int from, int to) {
  if (!chars.is_alnum(t[from])) return kPunct;
  int separators = 0;
  for (int i = from; i < to; ++i) {
    if (CharTable::is_digit(t[i])) continue;
    if ((t[i] != '.' && t[i] != ',') || ++separators > 1) return kWord;
  }
  return kNumber;
}

constexpr std::initializer_list<const char*> kDomainFields = {"com", "net", "org", "info",
                                                              "gov", "edu", "biz"};
constexpr std::initializer_list<const char*> kDomainEnds = {
    "com", "net", "org", "info", "gov", "edu", "biz", "vn", "jp",
    "kr",  "us",  "uk",  "au",   "sg",  "cn",  "ru",  "pl", "ca"};

// The token is a domain name's last label (".com") after an alphanumeric character.
bool is_domain(const CharTable& chars, const uint32_t* t, int from, int to, bool field) {
  int len = to - from;
  return len <= 4 && len >= (field ? 3 : 2) && from > 1 && t[from - 1] == '.' &&
         chars.is_alnum(t[from - 2]) && in_list(t, from, to, field ? kDomainFields : kDomainEnds);
}

bool small_number_or_letter(const uint32_t* t, int start, int end, uint8_t type) {
  return (type == kNumber && end - start <= 6) || (end - start == 1 && t[start] >= 'a' && t[start] <= 'z');
}

bool is_ordinal_suffix(uint32_t a, uint32_t b) {
  return (a == 't' && b == 'h') || (a == 's' && b == 't') || (a == 'n' && b == 'd') ||
         (a == 'r' && b == 'd');
}

}  // namespace

void Segmenter::tokenize(const uint32_t* t, int n, std::vector<Token>& out, std::vector<int>& splits,
                         bool sticky, bool keep_punct) const {
  const CharTable& chars = dict_->chars;
  // best[i]: the best score of a segmentation of t[0, i); trace[i]: where its last word starts
  // (-1: position i is not the end of a word).
  std::vector<double> best(n + 1, 0);
  std::vector<int> trace(n + 1, -1);
  std::vector<uint8_t> special(n + 1, 0);
  double last_score = 0;
  bool may_start = true;
  for (int i = 0; i < n; ++i) {
    if (trace[i] != -1) {
      last_score = best[i];
      may_start = true;
    }
    if (!chars.is_alnum(t[i]) || !may_start) continue;
    may_start = false;
    Walk walk;
    for (Candidate c = next_candidate(t, n, i, walk); c.right != -1;
         c = next_candidate(t, n, c.right, walk)) {
      if (best[c.right] < last_score + c.weight) {
        best[c.right] = last_score + c.weight;
        trace[c.right] = i;
        special[c.right] = c.special;
      }
      if (!c.has_more) break;
    }
  }

  // Back from the end: the words of the best segmentation, last first, with the rules that
  // merge or relabel them (percentages, ordinals, x^y and a+b, domains and URLs).
  out.reserve(out.size() + size_t(n) / 2 + 1);  // more than the words: no regrowth
  bool next_is_domain = false;
  for (int i = n; i > 0;) {
    if (trace[i] == -1) {
      --i;
      continue;
    }
    out.push_back(Token{trace[i], i, token_type(chars, t, trace[i], i)});
    if (!sticky) {
      i = trace[i];
      continue;
    }
    auto merge_into_next = [&](int new_end) {
      Token& back = out.back();
      back.end = new_end;
      back.type = kWord;
      back.seg = kSkip;
      std::swap(back, out[out.size() - 2]);
      out.pop_back();
    };
    if (special[i]) {
      out.back().seg = kSkip;
    } else {
      Token& back = out.back();
      if (back.type == kNumber) {
        if (back.end < n && t[back.end] == '%') {
          ++back.end;
          back.type = kWord;
          back.seg = kSkip;
        } else if (out.size() > 1) {
          const Token& after = out[out.size() - 2];
          if (after.start == back.end && after.end - after.start == 2 &&
              is_ordinal_suffix(t[after.start], t[after.start + 1]))
            merge_into_next(back.end + 2);  // 1st, 22nd, 10th
        }
      }
      if (out.size() > 1) {
        const Token& b = out.back();
        const Token& after = out[out.size() - 2];
        if (b.end < n && (t[b.end] == '^' || t[b.end] == '+') && b.end + 1 == after.start &&
            small_number_or_letter(t, b.start, b.end, b.type) &&
            small_number_or_letter(t, after.start, after.end, after.type))
          merge_into_next(after.end);  // x^y, a+b, 12+13
      }
    }
    if (out.back().type == kNumber) out.back().seg = kSkip;

    Token& back = out.back();
    if (next_is_domain) {
      if (is_domain(chars, t, back.start, back.end, true)) {
        back.seg = kUrlEnd;
      } else {
        // A label before a domain ending: part of a host name, up to the last space in it.
        back.seg = kUrlPart;
        int space = -1;
        for (int k = back.end - 1; k >= back.start && space == -1; --k)
          if (t[k] == ' ') space = k;
        if (space == -1) {
          next_is_domain = back.start > 0 && t[back.start - 1] == '.';
        } else {
          int start = back.start;
          back.start = space + 1;
          out.push_back(Token{start, space});
          next_is_domain = false;
        }
      }
    } else if (is_domain(chars, t, back.start, back.end, false)) {
      if (is_domain(chars, t, back.start, back.end, true)) {
        int k = int(out.size()) - 2;
        while (k >= 0 && out[k].start == out[k + 1].end + 1 && t[out[k].start - 1] == '.') --k;
        ++k;
        out[k++].seg = kSkip;
        while (k < int(out.size())) out[k++].seg = kUrlEnd;
      } else {
        back.seg = kSkip;
      }
      next_is_domain = true;
    }
    if (out.back().seg == kUrlPart && dict_->has_nontone_data()) split_url_part(t, out, splits);
    i = trace[i];
  }

  if (!keep_punct) {
    std::reverse(out.begin(), out.end());
  } else {
    // In text order, with every character between words but spaces as a token of its own,
    // except between the parts of a URL. (coccoc makes tokens of the spaces too, and its
    // word_tokenize drops them again.)
    std::vector<Token> words;
    words.swap(out);
    out.reserve(words.size() * 2);
    auto add_between = [&](int& pos, int until) {
      for (; pos < until; ++pos)
        if (t[pos] != ' ') out.push_back(Token{pos, pos + 1, kPunct});
    };
    int pos = 0;
    bool inside_url = false;
    for (auto it = words.rbegin(); it != words.rend(); ++it) {
      bool joins_url = it->in_url() || (it->seg == kSkip && it->start > 0 && t[it->start - 1] == '.');
      if (!(inside_url && joins_url)) add_between(pos, it->start);
      out.push_back(*it);
      pos = it->end;
      inside_url = it->in_url();
    }
    add_between(pos, n);
  }
  if (sticky) std::reverse(splits.begin(), splits.end());
}

// Splits the last token of `out`, a run-together part of a URL, into the words of its
// syllables; `splits` gets the positions where a syllable boundary was inserted.
void Segmenter::split_url_part(const uint32_t* t, std::vector<Token>& out, std::vector<int>& splits) const {
  const Token part = out.back();
  std::vector<int> sub_splits;
  split_run_together(t + part.start, part.end - part.start, sub_splits);
  if (sub_splits.empty()) return;
  std::vector<uint32_t> spaced;
  spaced.reserve(part.end - part.start + sub_splits.size());
  for (int pos = part.start, k = 0; pos < part.end; ++pos) {
    if (k < int(sub_splits.size()) && pos - part.start == sub_splits[k]) {
      spaced.push_back(' ');
      ++k;
    }
    spaced.push_back(t[pos]);
  }
  std::vector<Token> sub;
  tokenize(spaced.data(), int(spaced.size()), sub, sub_splits, false, true);
  out.pop_back();
  // Back into the coordinates of `t`: subtract the spaces inserted before each position.
  for (int r = int(sub.size()) - 1, k = int(sub_splits.size()) - 1; r >= 0; --r) {
    Token tok = sub[r];
    tok.seg = part.seg;
    while (k >= 0 && sub_splits[k] + k >= tok.end) --k;
    tok.end += part.start - (k + 1);
    while (k >= 0 && sub_splits[k] + k > tok.start) {
      splits.push_back(sub_splits[k] + part.start);
      --k;
    }
    tok.start += part.start - (k + 1);
    out.push_back(tok);
  }
}

// The best split of alphanumeric text into syllables (at most 25 characters each) by syllable
// scores and the scores of adjacent pairs: a dynamic programme over (end, length of the last
// syllable). Appends the split positions (never between two digits) in increasing order.
void Segmenter::split_run_together(const uint32_t* t, int n, std::vector<int>& splits) const {
  if (t == nullptr || n <= 0) return;
  constexpr int K = 25, W = K + 1;
  const TrieView& syl = dict_->syllables;
  const PairView& pairs = dict_->pairs;
  // trace is kept for every position (as int8: a length or -1); scores and trie nodes only for
  // the K + 1 rows still in reach, so a long run costs 26 bytes a character.
  std::vector<int8_t> trace(size_t(n + 1) * W, -1);
  std::vector<double> best(size_t(W) * W);
  std::vector<int32_t> node(size_t(W) * W);
  auto row = [](int pos) { return size_t(pos % W) * W; };
  auto clear_row = [&](int pos) {
    std::fill_n(best.begin() + row(pos), W, -1.0);
    std::fill_n(node.begin() + row(pos), W, -1);
  };
  for (int p = 0; p <= std::min(n, K); ++p) clear_row(p);
  best[row(0)] = 0;
  std::vector<uint8_t> reached(n + 1, 0);
  reached[0] = 1;
  for (int i = 0; i < n; ++i) {
    if (i > 0 && i + K <= n) clear_row(i + K);
    if (!reached[i]) continue;
    int32_t cur = 0;
    for (int j = i; j < i + K && j < n; ++j) {
      if ((cur = syl.child(cur, t[j])) < 0) break;
      node[row(j + 1) + (j - i + 1)] = cur;
    }
    // Previous syllable lengths in the order coccoc visits them (longest first): it matters
    // for ties.
    for (int last = i == 0 ? 0 : std::min(K, i); last >= (i == 0 ? 0 : 1); --last) {
      if (i > 0 && trace[size_t(i) * W + last] < 0) continue;
      int32_t last_node = node[row(i) + last];
      double base = best[row(i) + last];
      for (int j = i; j < i + K && j < n; ++j) {
        int len = j - i + 1;
        int32_t next = node[row(j + 1) + len];
        if (next == -1) break;
        double score = syl.weight(next);
        float pair;
        if (last_node != -1 && syl.value(last_node) != -1 && syl.value(next) != -1 &&
            pairs.find(syl.value(last_node), syl.value(next), pair))
          score += pair;
        double& slot = best[row(j + 1) + len];
        if (slot < base + score) {
          slot = base + score;
          trace[size_t(j + 1) * W + len] = int8_t(last);
          reached[j + 1] = 1;
        }
      }
    }
  }
  int last = 0;
  for (int j = 1; j <= std::min(K, n); ++j)
    if (trace[size_t(n) * W + j] >= 0 && best[row(n) + last] < best[row(n) + j]) last = j;
  size_t first = splits.size();
  for (int i = n, j = last; i > 0;) {
    int previous = trace[size_t(i) * W + j];
    if (previous < 0) break;
    int at = i - j;
    if (at > 0 && !(CharTable::is_digit(t[at - 1]) && CharTable::is_digit(t[at]))) splits.push_back(at);
    j = previous;
    i = at;
  }
  std::reverse(splits.begin() + first, splits.end());
}

namespace {

// Between the parts of a URL coccoc keeps no separator; add each non-space character it skipped
// as a piece of its own (dropped from word_tokenize), so that no text is lost from the spans.
void cover_gaps(std::string_view utf8, std::vector<Piece>& pieces) {
  auto gap_has_text = [&](int64_t from, int64_t to) {
    for (int64_t b = from; b < to; ++b)
      if (utf8[size_t(b)] != ' ') return true;
    return false;
  };
  int64_t end = 0;
  bool any = false;
  for (const Piece& piece : pieces) {
    if (piece.byte_start > end && gap_has_text(end, piece.byte_start)) any = true;
    end = std::max(end, piece.byte_end);
  }
  if (!any && !gap_has_text(end, int64_t(utf8.size()))) return;  // the usual case: no copy
  std::vector<Piece> out;
  out.reserve(pieces.size());
  auto* p = reinterpret_cast<const unsigned char*>(utf8.data());
  int64_t byte = 0, ch = 0;
  auto fill = [&](int64_t until) {
    while (byte < until) {
      size_t at = size_t(byte), next = at;
      decode_utf8(p, utf8.size(), next);
      if (p[at] != ' ')
        out.push_back(Piece{ch, ch + 1, int64_t(at), int64_t(next), std::string(utf8.substr(at, next - at)), kPunct, true});
      byte = int64_t(next);
      ++ch;
    }
  };
  for (Piece& piece : pieces) {
    if (piece.byte_start > byte) fill(piece.byte_start);
    byte = std::max(byte, piece.byte_end);
    ch = std::max(ch, piece.char_end);
    out.push_back(std::move(piece));
  }
  fill(int64_t(utf8.size()));
  pieces.swap(out);
}

}  // namespace

std::vector<Piece> Segmenter::segment(std::string_view utf8, Mode mode) const {
  const CharTable& chars = dict_->chars;
  if (utf8.size() > size_t(INT32_MAX))
    throw std::length_error("text is " + std::to_string(utf8.size()) +
                            " bytes long; at most 2**31 - 1 can be segmented at once");
  Normalised s = normalise(chars, utf8);
  std::vector<Token> tokens;
  std::vector<int> splits;  // normalised positions where a syllable boundary was inserted
  if (mode == Mode::kNormal) {
    tokenize(s.text.data(), int(s.text.size()), tokens, splits, true, true);
  } else if (mode == Mode::kHost) {
    // Labels between dots, with everything that is neither alphanumeric nor a dot dropped.
    size_t kept = 0;
    int last_dot = -1;
    for (size_t i = 0; i < s.text.size(); ++i) {
      bool dot = s.text[i] == '.';
      if (!dot && !chars.is_alnum(s.text[i])) continue;
      if (dot) {
        tokens.push_back(Token{last_dot + 1, int(kept)});
        last_dot = int(kept);
      }
      s.text[kept] = s.text[i];
      s.byte_at[kept] = s.byte_at[i];
      s.char_at[kept] = s.char_at[i];
      ++kept;
    }
    s.byte_at[kept] = s.byte_at.back();
    s.char_at[kept] = s.char_at.back();
    tokens.push_back(Token{last_dot + 1, int(kept)});
  } else {
    // A URL: without its scheme, every run of letters and digits split into syllables, every
    // separator but '.' and '/' turned into a space.
    size_t start = 0;
    if (matches_ascii(s.text, "http", 0)) start = matches_ascii(s.text, "://", 4) ? 7 : matches_ascii(s.text, "s://", 4) ? 8 : 0;
    Normalised spaced;
    auto copy = [&](uint32_t c, size_t from) {
      spaced.text.push_back(c);
      spaced.byte_at.push_back(s.byte_at[from]);
      spaced.char_at.push_back(s.char_at[from]);
    };
    auto add_run = [&](size_t from, size_t to) {
      size_t k = splits.size();
      split_run_together(s.text.data() + from, int(to - from), splits);
      for (size_t pos = 0; pos < to - from; ++pos) {
        if (k < splits.size() && int(pos) == splits[k]) {
          splits[k++] = int(spaced.text.size());
          copy(' ', from + pos);
        }
        copy(s.text[from + pos], from + pos);
      }
    };
    size_t run_start = start;
    for (size_t i = start; i < s.text.size(); ++i) {
      if (chars.is_alnum(s.text[i])) continue;
      if (run_start != i) add_run(run_start, i);
      copy(s.text[i] == '.' || s.text[i] == '/' ? s.text[i] : ' ', i);
      run_start = i + 1;
    }
    if (run_start < s.text.size()) add_run(run_start, s.text.size());
    spaced.byte_at.push_back(s.byte_at.back());
    spaced.char_at.push_back(s.char_at.back());
    s = std::move(spaced);
    tokenize(s.text.data(), int(s.text.size()), tokens, splits, false, false);
  }

  // Texts from the original bytes, as coccoc's Python binding builds them: spaces become '_',
  // and a '_' goes where a syllable boundary was inserted inside a token.
  for (int& pos : splits) pos = int(s.byte_at[pos]);
  splits.push_back(-1);
  std::vector<Piece> pieces;
  pieces.reserve(tokens.size());
  size_t k = 0;
  for (const Token& tok : tokens) {
    Piece p{s.char_at[tok.start], s.char_at[tok.end], s.byte_at[tok.start], s.byte_at[tok.end], {}, tok.type};
    while (splits[k] != -1 && splits[k] <= p.byte_start) ++k;  // a split at the start adds nothing
    if (splits[k] == -1 || splits[k] >= p.byte_end) {  // the usual case: one copy
      p.text.assign(utf8.data() + p.byte_start, size_t(p.byte_end - p.byte_start));
    } else {
      for (int64_t pos = p.byte_start; pos < p.byte_end; ++pos) {
        if (splits[k] == pos) {
          p.text += '_';
          ++k;
        }
        p.text += utf8[pos];
      }
    }
    for (char& c : p.text) c = c == ' ' ? '_' : c;  // branch-free, unlike std::replace
    p.dropped_by_coccoc = p.text.size() == 1 && p.text[0] == '_';
    pieces.push_back(std::move(p));
  }
  if (mode == Mode::kNormal) cover_gaps(utf8, pieces);
  return pieces;
}

}  // namespace electra_fast::vi
