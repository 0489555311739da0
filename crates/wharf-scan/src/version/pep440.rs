//! PEP 440 versions (PyPI): `[N!]N(.N)*[{a|b|rc}N][.postN][.devN][+local]`, with the spellings
//! PEP 440 normalises (`alpha`, `c`, `pre`, `preview`, `-N` for post, `rev`, `r`, separators
//! `.`, `-`, `_` or none, a leading `v`, upper case).

use std::cmp::Ordering;

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
enum Local {
    // Derived order: a string segment sorts before any number, as PEP 440 asks.
    Str(String),
    Num(u64),
}

#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Version {
    epoch: u64,
    release: Vec<u64>,
    pre: Option<(u8, u64)>,
    post: Option<u64>,
    dev: Option<u64>,
    local: Vec<Local>,
}

struct Scanner<'a> {
    s: &'a str,
}

impl Scanner<'_> {
    fn number(&mut self) -> Option<u64> {
        let n = self.s.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        let (digits, rest) = self.s.split_at(n);
        self.s = rest;
        digits.parse().ok()
    }
    fn separator(&mut self) -> bool {
        match self.s.as_bytes().first() {
            Some(b'.' | b'-' | b'_') => {
                self.s = &self.s[1..];
                true
            }
            _ => false,
        }
    }
    /// Consumes an optional separator followed by one of `words`; returns the word's index.
    fn word(&mut self, words: &[&str]) -> Option<usize> {
        let saved = self.s;
        self.separator();
        for (i, w) in words.iter().enumerate() {
            if let Some(rest) = self.s.strip_prefix(w) {
                self.s = rest;
                return Some(i);
            }
        }
        self.s = saved;
        None
    }
    /// The number after a pre/post/dev word: an optional separator then digits, 0 if absent.
    fn implicit_number(&mut self) -> u64 {
        let saved = self.s;
        self.separator();
        match self.number() {
            Some(n) => n,
            None => {
                self.s = saved;
                0
            }
        }
    }
}

pub fn parse(v: &str) -> Option<Version> {
    let lowered = v.trim().to_ascii_lowercase();
    let mut p = Scanner {
        s: lowered.strip_prefix('v').unwrap_or(&lowered),
    };
    let mut epoch = 0;
    let mut release = vec![p.number()?];
    if p.s.starts_with('!') {
        epoch = release[0];
        p.s = &p.s[1..];
        release = vec![p.number()?];
    }
    while p.s.starts_with('.') && p.s[1..].starts_with(|c: char| c.is_ascii_digit()) {
        p.s = &p.s[1..];
        release.push(p.number()?);
    }
    // Longer spellings first so that `alpha` is not read as `a` followed by junk.
    const PRE: [&str; 7] = ["alpha", "beta", "preview", "pre", "rc", "a", "b"];
    const PRE_RANK: [u8; 7] = [0, 1, 2, 2, 2, 0, 1];
    let mut pre = None;
    if let Some(i) = p.word(&PRE).or_else(|| p.word(&["c"]).map(|_| 4)) {
        pre = Some((PRE_RANK[i], p.implicit_number()));
    }
    let mut post = None;
    if p.s.starts_with('-') && p.s[1..].starts_with(|c: char| c.is_ascii_digit()) {
        p.s = &p.s[1..];
        post = p.number();
    } else if p.word(&["post", "rev", "r"]).is_some() {
        post = Some(p.implicit_number());
    }
    let mut dev = None;
    if p.word(&["dev"]).is_some() {
        dev = Some(p.implicit_number());
    }
    let mut local = Vec::new();
    if let Some(rest) = p.s.strip_prefix('+') {
        for seg in rest.split(['.', '-', '_']) {
            if seg.is_empty() || !seg.bytes().all(|c| c.is_ascii_alphanumeric()) {
                return None;
            }
            local.push(match seg.parse() {
                Ok(n) => Local::Num(n),
                Err(_) => Local::Str(seg.to_string()),
            });
        }
        p.s = "";
    }
    if !p.s.is_empty() {
        return None;
    }
    Some(Version {
        epoch,
        release,
        pre,
        post,
        dev,
        local,
    })
}

impl Ord for Version {
    fn cmp(&self, o: &Self) -> Ordering {
        // Trailing zeros do not count: 1.0 == 1.0.0.
        fn trimmed(r: &[u64]) -> &[u64] {
            let n = r.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
            &r[..n]
        }
        // A dev release of a final version sorts before its pre-releases: 1.0.dev1 < 1.0a1.
        fn pre_key(v: &Version) -> (i8, u8, u64) {
            match (v.pre, v.post, v.dev) {
                (None, None, Some(_)) => (-1, 0, 0),
                (None, _, _) => (1, 0, 0),
                (Some((k, n)), _, _) => (0, k, n),
            }
        }
        fn post_key(v: &Version) -> (bool, u64) {
            (v.post.is_some(), v.post.unwrap_or(0))
        }
        fn dev_key(v: &Version) -> (bool, u64) {
            (v.dev.is_none(), v.dev.unwrap_or(0))
        }
        self.epoch
            .cmp(&o.epoch)
            .then_with(|| trimmed(&self.release).cmp(trimmed(&o.release)))
            .then_with(|| pre_key(self).cmp(&pre_key(o)))
            .then_with(|| post_key(self).cmp(&post_key(o)))
            .then_with(|| dev_key(self).cmp(&dev_key(o)))
            .then_with(|| self.local.cmp(&o.local))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    Some(parse(a)?.cmp(&parse(b)?))
}

#[cfg(test)]
mod tests {
    use super::compare;
    use std::cmp::Ordering::*;

    #[test]
    fn pep440_ordering() {
        // The ordering example of PEP 440, oldest first.
        let ordered = [
            "1.0.dev456",
            "1.0a1",
            "1.0a2.dev456",
            "1.0a12.dev456",
            "1.0a12",
            "1.0b1.dev456",
            "1.0b2",
            "1.0b2.post345.dev456",
            "1.0b2.post345",
            "1.0rc1.dev456",
            "1.0rc1",
            "1.0",
            "1.0+abc.5",
            "1.0+abc.7",
            "1.0+5",
            "1.0.post456.dev34",
            "1.0.post456",
            "1.0.15",
            "1.1.dev1",
        ];
        for w in ordered.windows(2) {
            assert_eq!(compare(w[0], w[1]), Some(Less), "{} < {}", w[0], w[1]);
            assert_eq!(compare(w[1], w[0]), Some(Greater), "{} > {}", w[1], w[0]);
        }
    }

    #[test]
    fn normalised_spellings_are_equal() {
        for (a, b) in [
            ("1.0", "1.0.0"),
            ("1.0alpha1", "1.0a1"),
            ("1.0-c1", "1.0rc1"),
            ("1.0.preview2", "1.0rc2"),
            ("1.0-1", "1.0.post1"),
            ("1.0.rev", "1.0.post0"),
            ("V1.0.DEV", "1.0.dev0"),
            ("1!2.0", "1!2.0.0"),
            ("1.0b", "1.0b0"),
        ] {
            assert_eq!(compare(a, b), Some(Equal), "{a} == {b}");
        }
        assert_eq!(compare("1!1.0", "2.0"), Some(Greater));
        assert_eq!(compare("1.26.4", "1.26.5"), Some(Less));
        assert_eq!(compare("not a version", "1.0"), None);
        assert_eq!(compare("1.0+", "1.0"), None);
    }
}
