//! Alpine version ordering, following apk-tools' `version.c` token by token: digits, a letter,
//! `_alpha`/`_beta`/`_pre`/`_rc` (before the release) and `_cvs`/`_svn`/`_git`/`_hg`/`_p` (after
//! it), then `-rN`.

use std::cmp::Ordering;

// The numeric order of these matters: apk compares token kinds with `<` and `>`.
const INVALID: i8 = -1;
const DIGIT_OR_ZERO: i8 = 0;
const DIGIT: i8 = 1;
const LETTER: i8 = 2;
const SUFFIX: i8 = 3;
const SUFFIX_NO: i8 = 4;
const REVISION_NO: i8 = 5;
const END: i8 = 6;

const PRE_SUFFIXES: [&str; 4] = ["alpha", "beta", "pre", "rc"];
const POST_SUFFIXES: [&str; 5] = ["cvs", "svn", "git", "hg", "p"];

struct Cursor<'a> {
    s: &'a [u8],
    kind: i8,
}

impl Cursor<'_> {
    fn next_kind(&mut self) {
        let prev = self.kind;
        let mut n = INVALID;
        match self.s.first() {
            None | Some(0) => n = END,
            Some(c) if (prev == DIGIT || prev == DIGIT_OR_ZERO) && c.is_ascii_lowercase() => {
                n = LETTER
            }
            Some(c) if prev == LETTER && c.is_ascii_digit() => n = DIGIT,
            Some(c) if prev == SUFFIX && c.is_ascii_digit() => n = SUFFIX_NO,
            Some(c) => {
                match c {
                    b'.' => n = DIGIT_OR_ZERO,
                    b'_' => n = SUFFIX,
                    b'-' if self.s.get(1) == Some(&b'r') => {
                        n = REVISION_NO;
                        self.s = &self.s[1..];
                    }
                    _ => {}
                }
                self.s = &self.s[1..];
            }
        }
        if n < prev
            && !((n == DIGIT_OR_ZERO && prev == DIGIT)
                || (n == SUFFIX && prev == SUFFIX_NO)
                || (n == DIGIT && prev == LETTER))
        {
            n = INVALID;
        }
        self.kind = n;
    }

    fn token(&mut self) -> i64 {
        if self.s.is_empty() {
            self.kind = END;
            return 0;
        }
        let mut i = 0;
        let mut v: i64 = 0;
        let mut then = INVALID;
        match self.kind {
            DIGIT_OR_ZERO => {
                // Leading zeros count against the number that follows: 1.05 < 1.5.
                while i < self.s.len() && self.s[i] == b'0' {
                    i += 1;
                }
                then = DIGIT;
                v = -(i as i64);
            }
            DIGIT | SUFFIX_NO | REVISION_NO => {
                while i < self.s.len() && self.s[i].is_ascii_digit() {
                    v = v
                        .saturating_mul(10)
                        .saturating_add((self.s[i] - b'0') as i64);
                    i += 1;
                }
            }
            LETTER => {
                v = self.s[0] as i64;
                i = 1;
            }
            SUFFIX => {
                if let Some(k) = PRE_SUFFIXES
                    .iter()
                    .position(|p| self.s.starts_with(p.as_bytes()))
                {
                    i = PRE_SUFFIXES[k].len();
                    v = k as i64 - PRE_SUFFIXES.len() as i64;
                } else if let Some(k) = POST_SUFFIXES
                    .iter()
                    .position(|p| self.s.starts_with(p.as_bytes()))
                {
                    i = POST_SUFFIXES[k].len();
                    v = k as i64;
                } else {
                    self.kind = INVALID;
                    return -1;
                }
            }
            _ => {
                self.kind = INVALID;
                return -1;
            }
        }
        self.s = &self.s[i..];
        if self.s.is_empty() {
            self.kind = END;
        } else if then != INVALID {
            self.kind = then;
        } else {
            self.next_kind();
        }
        v
    }
}

/// Whether apk accepts `v` as a version at all.
pub fn is_valid(v: &str) -> bool {
    let mut c = Cursor {
        s: v.as_bytes(),
        kind: DIGIT,
    };
    if v.is_empty() || !v.as_bytes()[0].is_ascii_digit() {
        return false;
    }
    while c.kind != END && c.kind != INVALID {
        c.token();
    }
    c.kind == END
}

pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    if !is_valid(a) || !is_valid(b) {
        return None;
    }
    let mut x = Cursor {
        s: a.as_bytes(),
        kind: DIGIT,
    };
    let mut y = Cursor {
        s: b.as_bytes(),
        kind: DIGIT,
    };
    let (mut av, mut bv) = (0, 0);
    while x.kind == y.kind && x.kind != END && x.kind != INVALID && av == bv {
        av = x.token();
        bv = y.token();
    }
    if av != bv {
        return Some(av.cmp(&bv));
    }
    if x.kind == y.kind {
        return Some(Ordering::Equal);
    }
    // Equal so far: the longer version is newer, unless what it has left is a pre-release
    // suffix.
    if x.kind == SUFFIX
        && (Cursor {
            s: x.s,
            kind: SUFFIX,
        })
        .token()
            < 0
    {
        return Some(Ordering::Less);
    }
    if y.kind == SUFFIX
        && (Cursor {
            s: y.s,
            kind: SUFFIX,
        })
        .token()
            < 0
    {
        return Some(Ordering::Greater);
    }
    Some(y.kind.cmp(&x.kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_and_revisions() {
        assert_eq!(compare("1.2.3_rc1", "1.2.3"), Some(Ordering::Less));
        assert_eq!(compare("1.2.3_p1", "1.2.3"), Some(Ordering::Greater));
        assert_eq!(compare("3.0.7-r0", "3.0.8-r0"), Some(Ordering::Less));
        assert_eq!(compare("3.0.8-r1", "3.0.8-r0"), Some(Ordering::Greater));
        assert_eq!(compare("1.05", "1.5"), Some(Ordering::Less));
        assert_eq!(compare("1.0_alpha", "1.0_beta"), Some(Ordering::Less));
        assert_eq!(compare("2.0a", "2.0"), Some(Ordering::Greater));
        assert_eq!(compare("1.0-r1", "1.0-r1"), Some(Ordering::Equal));
    }

    #[test]
    fn invalid_versions_are_not_compared() {
        for bad in ["", "abc", "1.0_foo", "1.0-x", "1..0-"] {
            assert_eq!(compare(bad, "1.0"), None, "{bad:?}");
        }
    }
}
