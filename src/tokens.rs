//! Token accounting: image tokens per the model's rule, a fast text estimate, and the
//! context budget check.
//!
//! Text is estimated, not tokenised: the estimate follows the shape of BPE pre-tokenisation
//! (words with their leading space, digit groups, punctuation runs, newlines) and stays
//! within about 10% of OpenAI's `o200k_base`/`cl100k_base` encodings on ordinary text
//! (`tests` compares it with tiktoken on real documents). It runs at memory speed.

use std::fmt::Write as _;

use crate::config::ImageTokens;

/// Tokens one image of `width` x `height` (as sent) costs.
pub fn image_tokens(rule: ImageTokens, width: u32, height: u32) -> u64 {
    let patches = |patch: u32| {
        let p = u64::from(patch.max(1));
        (u64::from(width).div_ceil(p), u64::from(height).div_ceil(p))
    };
    match rule {
        // One token per patch plus one break token per row of patches.
        ImageTokens::Pixtral { patch } => {
            let (w, h) = patches(patch.get());
            h * (w + 1)
        }
        ImageTokens::Patch { patch } => {
            let (w, h) = patches(patch.get());
            w * h
        }
        ImageTokens::Fixed { tokens } => u64::from(tokens.get()),
    }
}

/// Tokens OpenAI's chat format adds per message (role and separators) and to prime the reply.
const PER_MESSAGE: u64 = 4;
const REPLY_PRIMING: u64 = 3;

/// A model's own tokenizer (`tokenizer = "tokenizer.json"`), for exact text counts.
#[derive(Clone)]
pub struct TextTokenizer {
    #[cfg(feature = "tokenizer")]
    inner: std::sync::Arc<tokenizers::Tokenizer>,
    #[cfg(not(feature = "tokenizer"))]
    never: std::convert::Infallible,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TextTokenizer")
    }
}

impl TextTokenizer {
    /// Loads a Hugging Face `tokenizer.json`.
    #[cfg(feature = "tokenizer")]
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        tokenizers::Tokenizer::from_file(path)
            .map(|t| Self {
                inner: std::sync::Arc::new(t),
            })
            .map_err(|e| e.to_string())
    }

    /// Without the `tokenizer` feature there is nothing to load with.
    #[cfg(not(feature = "tokenizer"))]
    pub fn load(_path: &std::path::Path) -> Result<Self, String> {
        Err("this build has no tokenizer support; build with `--features tokenizer`".to_owned())
    }

    /// The exact number of tokens of `text` (no special tokens added).
    pub fn count(&self, text: &str) -> u64 {
        #[cfg(feature = "tokenizer")]
        {
            // A text the tokenizer cannot encode falls back to the estimate.
            self.inner
                .encode_fast(text, false)
                .map_or_else(|_| estimate_text(text), |e| e.len() as u64)
        }
        #[cfg(not(feature = "tokenizer"))]
        {
            let _ = text;
            match self.never {}
        }
    }
}

/// Accumulates the text tokens of a conversation: exact with a tokenizer, else estimated.
#[derive(Debug, Clone, Copy, Default)]
pub struct TextCounter<'a> {
    tokens: u64,
    messages: u64,
    tokenizer: Option<&'a TextTokenizer>,
}

impl<'a> TextCounter<'a> {
    /// A counter using the model's tokenizer when it has one.
    pub fn new(tokenizer: Option<&'a TextTokenizer>) -> Self {
        Self {
            tokens: 0,
            messages: 0,
            tokenizer,
        }
    }

    /// Counts one message's framing.
    pub fn message(&mut self) {
        self.messages += 1;
    }

    /// Adds a piece of text.
    pub fn add(&mut self, text: &str) {
        self.tokens += match self.tokenizer {
            Some(t) => t.count(text),
            None => estimate_text(text),
        };
    }

    /// The estimate so far, framing included.
    pub fn total(&self) -> u64 {
        if self.messages == 0 {
            return self.tokens;
        }
        self.tokens + self.messages * PER_MESSAGE + REPLY_PRIMING
    }
}

/// Character classes of the pre-tokeniser.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Digit,
    Space,
    Newline,
    Punct,
    /// Non-ASCII: scripts without spaces cost about a token per character or two.
    Wide,
}

fn class(c: char) -> Class {
    match c {
        'a'..='z' | 'A'..='Z' => Class::Letter,
        '0'..='9' => Class::Digit,
        ' ' | '\t' => Class::Space,
        '\n' | '\r' => Class::Newline,
        c if c.is_ascii() => Class::Punct,
        c if c.is_alphabetic() && (c as u32) < 0x2E80 => Class::Letter,
        _ => Class::Wide,
    }
}

/// A fast estimate of the BPE tokens of `text`.
pub fn estimate_text(text: &str) -> u64 {
    let mut tokens = 0u64;
    let mut run = 0u64;
    let mut prev: Option<Class> = None;
    let flush = |class: Option<Class>, run: u64| match class {
        // Common words are one token; longer ones split into pieces of about six letters.
        Some(Class::Letter) => 1 + run.saturating_sub(10).div_ceil(6),
        // Digits are grouped by three.
        Some(Class::Digit) => run.div_ceil(3),
        // Runs of punctuation merge in pairs; spaces fold into the next word.
        Some(Class::Punct) if run <= 4 => run.div_ceil(2),
        Some(Class::Punct) => 2 + (run - 4).div_ceil(8),
        Some(Class::Newline) => 1,
        Some(Class::Wide) => run.div_ceil(2).max(1) + run / 4,
        Some(Class::Space) => u64::from(run > 1),
        None => 0,
    };
    for c in text.chars() {
        let k = class(c);
        if Some(k) == prev {
            run += 1;
            continue;
        }
        tokens += flush(prev, run);
        prev = Some(k);
        run = 1;
    }
    tokens += flush(prev, run);
    tokens
}

/// What a request costs against its model's context window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenCount {
    pub text: u64,
    pub images: u64,
    pub image_count: usize,
    /// `max_completion_tokens`, else `max_tokens`, else 0.
    pub max_tokens: u64,
}

impl TokenCount {
    /// Prompt plus the reserved completion.
    pub fn total(&self) -> u64 {
        self.text
            .saturating_add(self.images)
            .saturating_add(self.max_tokens)
    }

    /// "needs 4,460 tokens: text 200, 1 image 4,160, max_tokens 100".
    pub fn breakdown(&self) -> String {
        let mut out = format!(
            "needs {} tokens: text {}",
            thousands(self.total()),
            thousands(self.text)
        );
        if self.image_count > 0 {
            let _ = write!(
                out,
                ", {} image{} {}",
                self.image_count,
                if self.image_count == 1 { "" } else { "s" },
                thousands(self.images)
            );
        }
        if self.max_tokens > 0 {
            let _ = write!(out, ", max_tokens {}", thousands(self.max_tokens));
        }
        out
    }
}

/// `4460` → `"4,460"`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use proptest::prelude::*;

    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
    }

    #[test]
    fn pixtral_counts_a_break_token_per_row() {
        let rule = ImageTokens::Pixtral { patch: nz(16) };
        assert_eq!(image_tokens(rule, 1024, 1024), 4160);
        assert_eq!(image_tokens(rule, 256, 256), 272);
        assert_eq!(image_tokens(rule, 17, 1), 3);
        let patch = ImageTokens::Patch { patch: nz(16) };
        assert_eq!(image_tokens(patch, 1024, 1024), 4096);
        let fixed = ImageTokens::Fixed { tokens: nz(85) };
        assert_eq!(image_tokens(fixed, 4000, 3000), 85);
    }

    #[test]
    fn the_breakdown_reads_like_the_contract() {
        let c = TokenCount {
            text: 200,
            images: 4160,
            image_count: 1,
            max_tokens: 100,
        };
        assert_eq!(
            c.breakdown(),
            "needs 4,460 tokens: text 200, 1 image 4,160, max_tokens 100"
        );
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    proptest! {
        #[test]
        fn image_tokens_match_the_formulas(w in 1u32..20_000, h in 1u32..20_000, p in 1u32..64) {
            let (pw, ph) = (u64::from(w.div_ceil(p)), u64::from(h.div_ceil(p)));
            prop_assert_eq!(image_tokens(ImageTokens::Pixtral { patch: nz(p) }, w, h), ph * (pw + 1));
            prop_assert_eq!(image_tokens(ImageTokens::Patch { patch: nz(p) }, w, h), ph * pw);
            // Monotonic: a bigger image never costs fewer tokens.
            let rule = ImageTokens::Pixtral { patch: nz(p) };
            prop_assert!(image_tokens(rule, w + 1, h) >= image_tokens(rule, w, h), "monotonic");
        }

        #[test]
        fn the_text_estimate_is_additive_enough_and_never_panics(s in "\\PC{0,200}") {
            let n = estimate_text(&s);
            prop_assert!(n <= s.chars().count() as u64 + 1);
        }
    }
}

#[cfg(test)]
mod against_tiktoken {
    use super::estimate_text;

    /// Ordinary text from the machine (Debian's base-files ships the licenses) and prose of
    /// our own: the estimate must stay within 10% of real BPE encodings.
    fn corpus() -> Vec<(String, String)> {
        let mut docs = Vec::new();
        for name in ["GPL-3", "Apache-2.0", "MPL-2.0", "LGPL-2.1", "Artistic"] {
            let path = format!("/usr/share/common-licenses/{name}");
            if let Ok(text) = std::fs::read_to_string(&path) {
                docs.push((path, text));
            }
        }
        for (name, text) in [
            ("README.md", include_str!("../README.md")),
            ("ARCHITECTURE.md", include_str!("../ARCHITECTURE.md")),
            ("prose", PROSE),
        ] {
            docs.push((name.to_owned(), text.to_owned()));
        }
        docs
    }

    const PROSE: &str = "The photograph shows a small harbour at dusk. Three fishing boats, \
        painted red and white, are tied to a wooden pier, and a man in a yellow raincoat is \
        coiling a rope on the nearest one. Behind them the hills are dark green, almost black, \
        and a row of houses with lit windows climbs the slope. The sky is pale orange near the \
        horizon and deep blue above; a few gulls are visible as white specks. Describe what \
        you see, count the boats, and tell me whether the tide is in or out.\n\nIn 2024 the \
        company reported revenue of $1.2 billion, up 14% from the year before, while costs \
        grew by only 3%. Analysts expect similar growth next year.";

    #[test]
    fn the_estimate_is_within_ten_percent_of_o200k_and_cl100k() {
        let encodings = [
            ("o200k_base", tiktoken_rs::o200k_base()),
            ("cl100k_base", tiktoken_rs::cl100k_base()),
        ];
        let docs = corpus();
        assert!(docs.len() >= 5, "corpus too small");
        let mut bad = Vec::new();
        for (enc_name, bpe) in encodings {
            let bpe = bpe.unwrap_or_else(|e| panic!("{enc_name}: {e}"));
            for (doc, text) in &docs {
                let real = bpe.encode_ordinary(text).len() as f64;
                let est = estimate_text(text) as f64;
                let ratio = est / real;
                eprintln!("{enc_name} {doc}: real {real} est {est} ratio {ratio:.3}");
                if !(0.9..=1.1).contains(&ratio) {
                    bad.push(format!("{enc_name} on {doc}: {est} vs {real} ({ratio:.3})"));
                }
            }
        }
        assert!(bad.is_empty(), "estimate off by more than 10%: {bad:#?}");
    }
}
