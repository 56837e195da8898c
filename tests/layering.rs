//! The module map holds: no import cycle between the crate's top-level modules, but the
//! store's pin protocol (`cache` <-> `store`), and the arrows `docs/DESIGN.md` draws
//! (`admin` never reaches `server`; `serve` never reaches `server` or `admin`).
//!
//! Read from the sources: an edge `a -> b` is a `crate::b` path in the code (not a comment, not
//! a test module) of a file of module `a` (`src/a.rs` or `src/a/**.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Module -> the modules it names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut mods: BTreeMap<String, Vec<std::path::PathBuf>> = BTreeMap::new();
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        let p = e.path();
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            let mut v = Vec::new();
            files(&p, &mut v);
            mods.entry(name).or_default().extend(v);
        } else if name != "lib" && name != "main" {
            mods.entry(name).or_default().push(p);
        }
    }
    let mut g = BTreeMap::new();
    for (m, fs) in &mods {
        let mut to = BTreeSet::new();
        for f in fs {
            let text = std::fs::read_to_string(f).unwrap();
            // Code only: no test module, no comment (a doc may name another module).
            let code: String = text
                .split("#[cfg(test)]")
                .next()
                .unwrap_or("")
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            for (i, _) in code.match_indices("crate::") {
                let name: String = code[i + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if &name != m && mods.contains_key(&name) {
                    to.insert(name);
                }
            }
        }
        g.insert(m.clone(), to);
    }
    g
}

fn reaches(g: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_string()];
    while let Some(m) = stack.pop() {
        for n in g.get(&m).into_iter().flatten() {
            if n == to {
                return true;
            }
            if seen.insert(n.clone()) {
                stack.push(n.clone());
            }
        }
    }
    false
}

#[test]
fn no_import_cycle_but_the_pin_protocol() {
    let g = graph();
    let allowed: BTreeSet<(&str, &str)> = [("cache", "store"), ("store", "cache")].into();
    let mut cycles = Vec::new();
    for (a, tos) in &g {
        for b in tos {
            if reaches(&g, b, a) && !allowed.contains(&(a.as_str(), b.as_str())) {
                cycles.push(format!("{a} -> {b} -> ... -> {a}"));
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "import cycles: {cycles:#?}\ngraph: {g:#?}"
    );
}

#[test]
fn arrows_point_one_way() {
    let g = graph();
    for (from, to) in [
        ("admin", "server"),
        ("serve", "server"),
        ("serve", "admin"),
        ("upstream", "serve"),
        ("cache", "upstream"),
        ("store", "upstream"),
        ("http", "serve"),
        ("route", "serve"),
    ] {
        assert!(!reaches(&g, from, to), "{from} reaches {to}: {g:#?}");
    }
}
