//! `/etc/os-release` (or `/usr/lib/os-release`): shell-style `KEY=value` lines.

use crate::inventory::Os;

fn unquote(v: &str) -> String {
    let v = v.trim();
    let inner = v
        .strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
        .unwrap_or(v);
    inner.replace("\\\"", "\"").replace("\\\\", "\\")
}

pub fn parse(text: &str) -> Option<Os> {
    let mut os = Os {
        id: String::new(),
        version_id: None,
        pretty_name: None,
        id_like: Vec::new(),
    };
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once('=') else {
            continue;
        };
        let value = unquote(value);
        match key {
            "ID" => os.id = value.to_ascii_lowercase(),
            "VERSION_ID" => os.version_id = Some(value),
            "PRETTY_NAME" => os.pretty_name = Some(value),
            "ID_LIKE" => os.id_like = value.split_whitespace().map(str::to_string).collect(),
            _ => {}
        }
    }
    (!os.id.is_empty()).then_some(os)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_alpine_distroless() {
        let d = parse("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n").expect("os");
        assert_eq!(
            (d.id.as_str(), d.version_id.as_deref()),
            ("debian", Some("12"))
        );
        let a = parse("NAME=\"Alpine Linux\"\nID=alpine\nVERSION_ID=3.17.1\n").expect("os");
        assert_eq!(a.version_id.as_deref(), Some("3.17.1"));
        let g =
            parse("PRETTY_NAME=\"Distroless\"\nID=\"debian\"\nVERSION_ID=\"12\"\n").expect("os");
        assert!(g.is_distroless());
        let r = parse("ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\nVERSION_ID=\"9.3\"\n")
            .expect("os");
        assert_eq!(r.family(), "rhel");
        assert_eq!(parse("garbage\n"), None);
    }
}
