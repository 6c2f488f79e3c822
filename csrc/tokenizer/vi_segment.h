// Vietnamese word segmentation with coccoc-tokenizer's rules and scores: a dynamic programme
// over dictionary words for ordinary text, numbers, special terms and domains, and a second one
// over syllable pairs that splits run-together text ("vietnamairlines") in URLs and host names.
//
// A Segmenter holds only a pointer to an immutable Dictionary; every call keeps its state on its
// own stack, so one Segmenter may serve many threads at once.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "vi_dict.h"

namespace electra_fast::vi {

enum class Mode { kNormal = 0, kHost = 1, kUrl = 2 };
enum PieceType : uint8_t { kWord = 0, kNumber = 1, kPunct = 2 };

// One token as coccoc's Python binding (word_tokenize) produces it, with where it lies.
struct Piece {
  int64_t char_start, char_end;  // code points into the input
  int64_t byte_start, byte_end;  // bytes into the UTF-8 input
  std::string text;              // the original text, ' ' -> '_', '_' between split syllables
  uint8_t type;                  // PieceType
  // coccoc's word_tokenize leaves this piece out: a literal '_' (whose text is "_"), or a
  // separator between the parts of a URL, which only the spans keep.
  bool dropped_by_coccoc = false;
};

class Segmenter {
 public:
  explicit Segmenter(std::shared_ptr<const Dictionary> dict) : dict_(std::move(dict)) {}
  // Every piece in order; coccoc's word_tokenize is the texts of those not dropped_by_coccoc.
  // In normal mode the pieces cover every character of the text but the spaces.
  std::vector<Piece> segment(std::string_view utf8, Mode mode) const;
  const Dictionary& dictionary() const { return *dict_; }

 private:
  struct Token;
  struct Candidate;
  struct Walk;
  Candidate next_candidate(const uint32_t* t, int n, int from, Walk& walk) const;
  void tokenize(const uint32_t* t, int n, std::vector<Token>& out, std::vector<int>& splits,
                bool sticky, bool keep_punct) const;
  void split_url_part(const uint32_t* t, std::vector<Token>& out, std::vector<int>& splits) const;
  void split_run_together(const uint32_t* t, int n, std::vector<int>& splits) const;
  std::shared_ptr<const Dictionary> dict_;
};

}  // namespace electra_fast::vi
