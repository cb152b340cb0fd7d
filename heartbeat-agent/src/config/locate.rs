//! Where in the file a problem is, and how to say it: key paths
//! (`node[1].link[0].address`) found from byte spans in toml's span-keeping
//! document, every key's line and column, and serde's messages rewritten in
//! the operator's words ("expected X, found an integer (5)"; an unknown key
//! with the closest valid one).

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{MAX_SHOWN_LEN, raw, shorten, shorten_to};

/// One step of a key path.
#[derive(Clone)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

/// `node[1].link[0].address` (long keys cut).
pub(super) fn render(segs: &[Seg]) -> String {
    let mut out = String::new();
    for seg in segs {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let bare = !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if bare {
                    out.push_str(&shorten(k));
                } else {
                    out.push_str(&format!("{:?}", shorten(k)));
                }
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// What [`walk`] calls for each value: its key path, its span, and its key's
/// span (`None` for array elements).
pub(super) type Visit<'f> = dyn FnMut(&[Seg], Range<usize>, Option<Range<usize>>) + 'f;

/// Calls `f(path, span, key_span)` for every value in the document; the
/// key span is `None` for array elements.
pub(super) fn walk(table: &DeTable<'_>, segs: &mut Vec<Seg>, f: &mut Visit<'_>) {
    for (key, value) in table {
        segs.push(Seg::Key(key.get_ref().to_string()));
        f(segs, value.span(), Some(key.span()));
        walk_value(value, segs, f);
        segs.pop();
    }
}

pub(super) fn walk_value(value: &Spanned<DeValue<'_>>, segs: &mut Vec<Seg>, f: &mut Visit<'_>) {
    match value.get_ref() {
        DeValue::Table(t) => walk(t, segs, f),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                segs.push(Seg::Index(i));
                f(segs, item.span(), None);
                walk_value(item, segs, f);
                segs.pop();
            }
        }
        _ => {}
    }
}

/// What the key path at byte `pos` of the document is: the key written
/// there, or else the smallest value containing it. `true` when `pos` is a
/// key (an unknown key).
pub(super) fn locate(doc: &DeTable<'_>, pos: usize) -> (Vec<Seg>, bool) {
    let mut best: Option<(Vec<Seg>, bool, usize)> = None;
    walk(doc, &mut Vec::new(), &mut |segs, span, key_span| {
        if best.as_ref().is_some_and(|b| b.1) {
            return;
        }
        if key_span.as_ref().is_some_and(|k| k.start == pos) {
            best = Some((segs.to_vec(), true, 0));
            return;
        }
        let contains = span.start <= pos && (pos < span.end || span.start == span.end);
        if contains && best.as_ref().is_none_or(|b| span.len() <= b.2) {
            best = Some((segs.to_vec(), false, span.len()));
        }
    });
    best.map_or((Vec::new(), false), |(s, k, _)| (s, k))
}

/// The table at key path `segs`: how it is written, and its valid keys.
pub(super) fn table_kind(segs: &[Seg]) -> (&'static str, &'static [&'static str]) {
    use Seg::{Index, Key};
    match segs {
        [] => ("the top level", raw::field_names::<raw::Top>()),
        [Key(k)] if k == "cluster" => ("[cluster]", raw::field_names::<raw::Cluster>()),
        [Key(k)] if k == "quorum" => ("[quorum]", raw::field_names::<raw::Quorum>()),
        [Key(k)] if k == "metrics" => ("[metrics]", raw::field_names::<raw::Metrics>()),
        [Key(k)] if k == "control" => ("[control]", raw::field_names::<raw::Control>()),
        [Key(k), Index(_)] if k == "node" => ("[[node]]", raw::field_names::<raw::Node>()),
        [Key(k), Index(_)] if k == "package" => ("[[package]]", raw::field_names::<raw::Package>()),
        [Key(k)] if k == "serial" => ("[serial]", raw::field_names::<raw::Serial>()),
        [Key(k)] if k == "watchdog" => ("[watchdog]", raw::field_names::<raw::Watchdog>()),
        [Key(k), Index(_), Key(l)] if k == "node" && l == "serial" => {
            ("[node.serial]", raw::field_names::<raw::NodeSerial>())
        }
        [Key(k), Index(_), Key(l), Index(_)] if k == "node" && l == "link" => {
            ("[[node.link]]", raw::field_names::<raw::Link>())
        }
        _ => ("this table", &[]),
    }
}

/// Rewrites serde's "invalid type: integer `5`, expected X" as
/// "expected X, found an integer (5)".
pub(super) fn plain_serde_message(message: &str) -> String {
    // Messages made here cut what they echo; this bounds the others.
    let whole = || shorten_to(message, 4 * MAX_SHOWN_LEN).into_owned();
    // A table written as an array: serde's derive reads structs from
    // sequences too, and complains about the length.
    if let Some(rest) = message.strip_prefix("invalid length ")
        && let Some((_, expected)) = rest.split_once(", expected ")
    {
        return format!("expected {expected}, found an array");
    }
    let Some(rest) = message.strip_prefix("invalid type: ") else {
        return whole();
    };
    let Some((unexpected, expected)) = rest.split_once(", expected ") else {
        return whole();
    };
    let quoted = |prefix: &str| {
        unexpected
            .strip_prefix(prefix)
            .map(|v| v.trim_matches('`').to_owned())
    };
    let found = if unexpected == "map" {
        "a table".to_owned()
    } else if unexpected == "sequence" {
        "an array".to_owned()
    } else if let Some(v) = quoted("integer ") {
        format!("an integer ({v})")
    } else if let Some(v) = quoted("boolean ") {
        format!("a boolean ({v})")
    } else if let Some(v) = quoted("floating point ") {
        format!("a float ({v})")
    } else if let Some(v) = unexpected.strip_prefix("string ") {
        format!("a string ({})", shorten(v))
    } else {
        shorten(unexpected).into_owned()
    };
    format!("expected {expected}, found {found}")
}

/// The allowed key closest to a misspelt one, if close enough.
pub(super) fn closest<'k>(name: &str, allowed: &[&'k str]) -> Option<&'k str> {
    allowed
        .iter()
        .map(|a| (edit_distance(name, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 3) && *d < name.chars().count())
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            let v = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
            cur.push(v);
        }
        prev = cur;
    }
    prev[b.len()]
}
