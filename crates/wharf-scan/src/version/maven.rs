//! Maven versions, ordered as Maven's `ComparableVersion` orders them (the ordering OSV's Maven
//! ranges are written for): items split at `.`, `-` and digit/letter changes; numbers compare
//! as numbers; qualifiers rank alpha < beta < milestone < rc < snapshot < release < sp < any
//! other (those by name); a `-` opens a sub-list; trailing zeros and release qualifiers do not
//! count (`1.0` = `1` = `1-ga`).

use std::cmp::Ordering;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    /// Digits without leading zeros ("" is zero).
    Int(String),
    Str(String),
    List(Vec<Item>),
}

const QUALIFIERS: [&str; 7] = ["alpha", "beta", "milestone", "rc", "snapshot", "", "sp"];

/// The rank of a qualifier as a sortable text: known ones by position, others after them.
fn comparable(q: &str) -> String {
    match QUALIFIERS.iter().position(|k| *k == q) {
        Some(i) => i.to_string(),
        None => format!("{}-{q}", QUALIFIERS.len()),
    }
}

fn string_item(s: &str, followed_by_digit: bool) -> Item {
    let s = match s {
        "a" if followed_by_digit => "alpha",
        "b" if followed_by_digit => "beta",
        "m" if followed_by_digit => "milestone",
        "ga" | "final" | "release" => "",
        "cr" => "rc",
        other => other,
    };
    Item::Str(s.to_string())
}

fn item(digits: bool, s: &str) -> Item {
    if digits {
        Item::Int(s.trim_start_matches('0').to_string())
    } else {
        string_item(s, false)
    }
}

impl Item {
    fn is_null(&self) -> bool {
        match self {
            Item::Int(n) => n.is_empty(),
            Item::Str(s) => s.is_empty(),
            Item::List(l) => l.is_empty(),
        }
    }

    /// Compared with nothing (the other version ran out).
    fn cmp_null(&self) -> Ordering {
        match self {
            Item::Int(n) => {
                if n.is_empty() {
                    Ordering::Equal
                } else {
                    Ordering::Greater
                }
            }
            Item::Str(s) => comparable(s).cmp(&comparable("")),
            Item::List(l) => l.first().map_or(Ordering::Equal, Item::cmp_null),
        }
    }

    fn compare(&self, other: &Item) -> Ordering {
        use Item::*;
        match (self, other) {
            (Int(a), Int(b)) => a.len().cmp(&b.len()).then_with(|| a.cmp(b)),
            (Int(_), _) => Ordering::Greater,
            (Str(_), Int(_)) => Ordering::Less,
            (Str(a), Str(b)) => comparable(a).cmp(&comparable(b)),
            (Str(_), List(_)) => Ordering::Less,
            (List(_), Int(_)) => Ordering::Less,
            (List(_), Str(_)) => Ordering::Greater,
            (List(a), List(b)) => {
                for i in 0..a.len().max(b.len()) {
                    let o = match (a.get(i), b.get(i)) {
                        (Some(x), Some(y)) => x.compare(y),
                        (Some(x), None) => x.cmp_null(),
                        (None, Some(y)) => y.cmp_null().reverse(),
                        (None, None) => Ordering::Equal,
                    };
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                Ordering::Equal
            }
        }
    }
}

/// Drops null items from the end, looking past sub-lists (`1.0-alpha` is `1-alpha`) and stopping
/// at the first other item that is not null.
fn normalize(list: &mut Vec<Item>) {
    let mut i = list.len();
    while i > 0 {
        i -= 1;
        if list[i].is_null() {
            list.remove(i);
        } else if !matches!(list[i], Item::List(_)) {
            break;
        }
    }
}

fn parse(version: &str) -> Item {
    let v = version.trim().to_ascii_lowercase();
    // The lists being built, innermost last; each is closed (normalized) into its parent.
    let mut stack: Vec<Vec<Item>> = vec![Vec::new()];
    let mut digits = false;
    let mut start = 0;
    let chars: Vec<(usize, char)> = v.char_indices().collect();
    let push = |stack: &mut Vec<Vec<Item>>, it: Item| {
        if let Some(top) = stack.last_mut() {
            top.push(it);
        }
    };
    for &(i, c) in &chars {
        match c {
            '.' | '-' => {
                let it = if i == start {
                    Item::Int(String::new())
                } else {
                    item(digits, &v[start..i])
                };
                push(&mut stack, it);
                start = i + c.len_utf8();
                if c == '-' {
                    stack.push(Vec::new());
                }
            }
            c if c.is_ascii_digit() => {
                if !digits && i > start {
                    push(&mut stack, string_item(&v[start..i], true));
                    start = i;
                    stack.push(Vec::new());
                }
                digits = true;
            }
            _ => {
                if digits && i > start {
                    push(&mut stack, item(true, &v[start..i]));
                    start = i;
                    stack.push(Vec::new());
                }
                digits = false;
            }
        }
    }
    if v.len() > start {
        push(&mut stack, item(digits, &v[start..]));
    }
    while stack.len() > 1 {
        let mut list = stack.pop().unwrap_or_default();
        normalize(&mut list);
        push(&mut stack, Item::List(list));
    }
    let mut root = stack.pop().unwrap_or_default();
    normalize(&mut root);
    Item::List(root)
}

/// Orders two Maven versions. Every string is a Maven version, so this never fails.
pub fn compare(a: &str, b: &str) -> Ordering {
    parse(a).compare(&parse(b))
}

#[cfg(test)]
mod tests {
    use super::compare;
    use std::cmp::Ordering::*;

    #[test]
    fn maven_ordering() {
        // Each is below the next (from Maven's own ComparableVersion tests).
        let ascending = [
            "1-alpha2snapshot",
            "1-alpha2",
            "1-alpha-123",
            "1-beta-2",
            "1-beta123",
            "1-m2",
            "1-m11",
            "1-rc",
            "1-cr2",
            "1-rc123",
            "1-SNAPSHOT",
            "1",
            "1-sp",
            "1-sp2",
            "1-sp123",
            "1-abc",
            "1-def",
            "1-pom-1",
            "1-1-snapshot",
            "1-1",
            "1-2",
            "1-123",
            "2.0.0-rc1",
            "2.0.0",
            "2.14.1",
            "2.15.0",
            "2.17.1",
            "10.0",
        ];
        for w in ascending.windows(2) {
            assert_eq!(compare(w[0], w[1]), Less, "{} < {}", w[0], w[1]);
            assert_eq!(compare(w[1], w[0]), Greater, "{} > {}", w[1], w[0]);
        }
        for (a, b) in [
            ("1", "1.0"),
            ("1", "1.0.0"),
            ("1.0", "1-ga"),
            ("1", "1-final"),
            ("1-cr1", "1-rc1"),
            ("1a1", "1-alpha-1"),
            ("1.0.0-RELEASE", "1.0.0"),
            ("2.0.01", "2.0.1"),
            ("1.0-alpha", "1-alpha"),
        ] {
            assert_eq!(compare(a, b), Equal, "{a} = {b}");
        }
    }
}
