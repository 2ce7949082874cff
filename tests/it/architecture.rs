//! The shape of the code (issue 22), checked on the sources in `src/` so that it cannot drift:
//! no import circle between files, no function over 80 lines, `impl Proxy` in one file. A small
//! reader of `crate::`, `super::`, `self::` and child-module paths rather than `cargo modules`:
//! no tool to install, and it runs with the other tests (`cargo test`, so in `.ci/run`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file of the library under `dir`, by module path (`proxy::ledger`; `""` for lib.rs).
fn modules(root: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(root).unwrap().with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if parts == ["main"] {
                continue; // the binary, a crate of its own
            }
            if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
                parts.pop();
            }
            out.insert(parts.join("::"), path);
        }
    }
    out
}

/// The text of a file without its test modules and comments, and with `pub(in …)` dropped.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]" && lines.peek().is_some_and(|n| n.trim_start().starts_with("mod ")) {
            let indent = &line[..line.len() - line.trim_start().len()];
            let end = format!("{indent}}}");
            for skipped in lines.by_ref() {
                if skipped == end {
                    break;
                }
            }
            continue;
        }
        let line = line.split("//").next().unwrap_or("");
        out.push_str(line);
        out.push('\n');
    }
    while let Some(at) = out.find("pub(in ") {
        let end = out[at..].find(')').map_or(out.len(), |e| at + e + 1);
        out.replace_range(at..end, "pub");
    }
    out
}

/// The paths written in `text`: each a list of its segments (`*` and `{` kept as a segment).
fn paths(text: &str) -> Vec<Vec<String>> {
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !ident(bytes[i]) || (i > 0 && (ident(bytes[i - 1]) || bytes[i - 1] == b':')) {
            i += 1;
            continue;
        }
        let mut segments = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while j < bytes.len() && ident(bytes[j]) {
                j += 1;
            }
            segments.push(text[start..j].to_owned());
            if text[j..].starts_with("::") {
                j += 2;
                if j < bytes.len() && (bytes[j] == b'*' || bytes[j] == b'{') {
                    segments.push((bytes[j] as char).to_string());
                    break;
                }
                if j < bytes.len() && ident(bytes[j]) {
                    continue;
                }
            }
            break;
        }
        if segments.len() > 1 {
            out.push(segments);
        }
        i = j.max(i + 1);
    }
    out
}

/// The deepest module named by `parts`.
fn resolve(parts: &[String], mods: &BTreeMap<String, PathBuf>) -> Option<String> {
    (0..=parts.len()).rev().map(|k| parts[..k].join("::")).find(|m| mods.contains_key(m))
}

/// Which modules each module's code refers to.
fn edges(mods: &BTreeMap<String, PathBuf>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for (module, path) in mods {
        let here: Vec<String> =
            if module.is_empty() { vec![] } else { module.split("::").map(String::from).collect() };
        let mut to = BTreeSet::new();
        for p in paths(&code(path)) {
            let (mut base, rest): (Vec<String>, &[String]) = match p[0].as_str() {
                "crate" => (vec![], &p[1..]),
                "self" => (here.clone(), &p[1..]),
                "super" => (here[..here.len().saturating_sub(1)].to_vec(), &p[1..]),
                // A child module named without `self::`.
                child if mods.contains_key(&[here.clone(), vec![child.to_owned()]].concat().join("::")) => {
                    (here.clone(), &p[..])
                }
                _ => continue,
            };
            let mut rest = rest;
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
            base.extend(rest.iter().filter(|s| *s != "*" && *s != "{").cloned());
            if let Some(target) = resolve(&base, mods).filter(|t| t != module) {
                to.insert(target);
            }
        }
        out.insert(module.clone(), to);
    }
    out
}

/// The circles of the graph (strongly connected parts of more than one module), Tarjan's way.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut part = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    part.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if part.len() > 1 {
                    part.sort();
                    self.found.push(part);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn issue22_no_file_of_src_imports_one_that_imports_it_back() {
    let mods = modules(&src());
    let graph = edges(&mods);
    // The reader itself must see the edges it is there to see.
    assert!(graph["proxy"].contains("proxy::core"), "proxy/mod.rs uses core: {:?}", graph["proxy"]);
    assert!(graph["proxy::bridge"].contains("proxy::core"));
    assert!(graph["config"].contains("cli"));
    let found = circles(&graph);
    let shown: Vec<String> = found
        .iter()
        .map(|part| {
            let lines: Vec<String> = part
                .iter()
                .map(|m| {
                    format!("  {m} -> {:?}", graph[m].iter().filter(|t| part.contains(t)).collect::<Vec<_>>())
                })
                .collect();
            lines.join("\n")
        })
        .collect();
    assert!(
        found.is_empty(),
        "import circles in src/ (move what both sides use into a leaf):\n{}",
        shown.join("\n\n")
    );
}

#[test]
fn issue22_the_circle_reader_finds_a_circle_through_a_parent() {
    let mut graph = BTreeMap::new();
    graph.insert("a".to_owned(), BTreeSet::from(["a::b".to_owned()]));
    graph.insert("a::b".to_owned(), BTreeSet::from(["a".to_owned()]));
    graph.insert("c".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(circles(&graph), vec![vec!["a".to_owned(), "a::b".to_owned()]]);
    let p = paths("use super::*; let x = crate::proxy::core::Core::new(); use super::{a, b};");
    assert_eq!(p[0], ["super", "*"]);
    assert_eq!(p[1], ["crate", "proxy", "core", "Core", "new"]);
    assert_eq!(p[2], ["super", "{"]);
}

#[test]
fn issue22_no_function_in_src_is_over_80_lines() {
    let mut long = Vec::new();
    for path in modules(&src()).values() {
        let text = std::fs::read_to_string(path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i];
            let trimmed = line.trim_start();
            let indent = &line[..line.len() - trimmed.len()];
            if trimmed == "#[cfg(test)]"
                && lines.get(i + 1).is_some_and(|n| n.trim_start().starts_with("mod "))
            {
                let end = format!("{indent}}}");
                i += 2;
                while i < lines.len() && lines[i] != end {
                    i += 1;
                }
                continue;
            }
            let head = trimmed
                .trim_start_matches("pub ")
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub(super) ")
                .trim_start_matches("const ")
                .trim_start_matches("async ")
                .trim_start_matches("unsafe ");
            if head.starts_with("fn ") && !line.trim_end().ends_with(';') && !line.trim_end().ends_with('}') {
                let end = format!("{indent}}}");
                let mut j = i + 1;
                while j < lines.len() && lines[j] != end {
                    j += 1;
                }
                if j - i + 1 > 80 {
                    long.push(format!("{}:{} ({} lines)", path.display(), i + 1, j - i + 1));
                }
            }
            i += 1;
        }
    }
    assert!(long.is_empty(), "functions over 80 lines (split them into named steps):\n{}", long.join("\n"));
}

#[test]
fn issue22_impl_proxy_lives_in_one_file() {
    let mut holders = Vec::new();
    for path in modules(&src()).values() {
        if std::fs::read_to_string(path).unwrap().contains("impl Proxy {") {
            holders.push(path.strip_prefix(src()).unwrap().display().to_string().replace('\\', "/"));
        }
    }
    assert_eq!(holders, ["proxy/mod.rs"]);
}
