//! The library's modules, as a graph of who names whom, point one way (LAYOUT.md): nothing
//! outside `cmd/` reaches into it, and no two modules need each other.
//!
//! A host test that reads `src/` as text, so that a reversed import fails `cargo test` on any
//! machine instead of waiting for a review. One node per top-level module; a directory
//! (`cmd/`, `datapath/`, `sources/`) is one node with all its files. An edge is a path that
//! starts at the crate root: `crate::x`, `use crate::{x, y::z}`, enough `super::` to climb out
//! of the file, and the same inside a string (serde's `with = "crate::x::y"`). Comments, doc
//! links included, are not edges: they do not make the compiler need the other module.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    path::Path,
};

/// Edges into `cmd/` from outside it that are tolerated: none since the agent restructuring
/// took `metrics` off `cmd::sources::rows`. An entry needs a comment saying when it goes.
const ALLOWED_INTO_CMD: &[(&str, &str)] = &[];

/// Edges left out before looking for cycles, each with the reason it still exists.
const ALLOWED_IN_CYCLES: &[(&str, &str)] = &[];

type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn nothing_outside_cmd_imports_cmd() {
    let graph = graph();
    let mut wrong = Vec::new();
    for (from, to) in edges(&graph) {
        if to == "cmd" && from != "cmd" && !ALLOWED_INTO_CMD.contains(&(from, to)) {
            wrong.push(format!("{from} -> {to}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "library modules name crate::cmd (the verbs sit on top; move what they share down): \
         {wrong:?}"
    );
    for &(from, to) in ALLOWED_INTO_CMD {
        assert!(
            graph[from].contains(to),
            "{from} -> {to} is gone: drop it from ALLOWED_INTO_CMD"
        );
    }
}

#[test]
fn no_module_cycle() {
    let graph = graph();
    let everything = cycles(&graph);
    println!("{}", describe(&graph, &everything));
    for &(from, to) in ALLOWED_IN_CYCLES {
        assert!(
            graph[from].contains(to),
            "{from} -> {to} is gone: drop it from ALLOWED_IN_CYCLES"
        );
    }
    let mut checked = graph.clone();
    for &(from, to) in ALLOWED_IN_CYCLES {
        checked
            .get_mut(from)
            .expect("allowed edge's module")
            .remove(to);
    }
    let left = cycles(&checked);
    assert!(
        left.is_empty(),
        "module cycles (an arrow must point down: move the shared piece into a leaf, or the \
         rule into the module that owns it):\n{}",
        list(&left)
    );
}

/// The parser reads what the source files write.
#[test]
fn paths_are_found_in_use_trees_strings_and_supers() {
    let text = r#"
        use crate::{alpha::{A, B}, beta, gamma::C};
        // crate::comment is not an edge, nor is "crate::prose with spaces"
        /* crate::block */
        #[serde(with = "crate::delta::text")]
        fn f() -> char { let _ = r#type; let _ = '{'; let _ = "}"; crate::epsilon::g(); '}' }
        mod tests {
            use super::*;
            use super::super::zeta;
        }
        use super::eta;
    "#;
    let names = [
        "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "comment",
    ];
    let found = references(text, 1, &names.map(String::from).into());
    assert_eq!(
        found,
        ["alpha", "beta", "delta", "epsilon", "eta", "gamma", "zeta"]
            .map(String::from)
            .into()
    );
    // Two levels down (`sources/source.rs`), one `super` stays in the node.
    let found = references("use super::{Kind, aws};", 2, &["aws".into()].into());
    assert!(found.is_empty(), "{found:?}");
}

/// The modules of `src/` and the modules each one names.
fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for entry in fs::read_dir(&src).expect("src/") {
        let path = entry.expect("src/ entry").path();
        if path.is_dir() {
            let node = file_name(&path);
            collect(&path, &mut |file| {
                // `d/mod.rs` is the module `d`; `d/f.rs` is `d::f`, one level further down.
                let depth = if file.ends_with("mod.rs") { 1 } else { 2 };
                files.push((node.clone(), depth, file.to_owned()));
            });
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            let stem = path
                .file_stem()
                .expect("file stem")
                .to_string_lossy()
                .into_owned();
            // The crate root declares modules; `main.rs` is the binary, another crate.
            if stem != "lib" && stem != "main" {
                files.push((stem, 1, path));
            }
        }
    }
    let names: BTreeSet<String> = files.iter().map(|(node, ..)| node.clone()).collect();
    let mut graph: Graph = names
        .iter()
        .map(|name| (name.clone(), BTreeSet::new()))
        .collect();
    for (node, depth, path) in files {
        let text = fs::read_to_string(&path).expect("source file");
        let mut found = references(&text, depth, &names);
        found.remove(&node);
        graph.get_mut(&node).expect("node").extend(found);
    }
    graph
}

fn collect(dir: &Path, each: &mut dyn FnMut(&Path)) {
    for entry in fs::read_dir(dir).expect("directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            collect(&path, each);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            each(&path);
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned()
}

fn edges(graph: &Graph) -> impl Iterator<Item = (&str, &str)> {
    graph
        .iter()
        .flat_map(|(from, to)| to.iter().map(move |to| (from.as_str(), to.as_str())))
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Ident(String),
    /// `::`
    PathSep,
    Str(String),
    Punct(char),
}

/// Rust tokens, enough of them to follow paths: comments dropped, strings and chars kept
/// whole so that a brace inside them does not count.
fn tokens(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            loop {
                if at(i) == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if at(i) == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else if i >= chars.len() {
                    break;
                } else {
                    i += 1;
                }
            }
        } else if c == '"' {
            let start = i + 1;
            i = start;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            out.push(Token::Str(
                chars[start..i.min(chars.len())].iter().collect(),
            ));
            i += 1;
        } else if c == '\'' {
            if at(i + 1) == '\\' {
                // An escaped char: '\n', '\'', '\u{7f}'.
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                // A lifetime or a label: the identifier follows as its own token.
                i += 1;
            }
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while at(i).is_alphanumeric() || at(i) == '_' {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let raw_prefix = matches!(word.as_str(), "r" | "br" | "cr");
            let hashes = (i..chars.len()).take_while(|&j| at(j) == '#').count();
            if raw_prefix && at(i + hashes) == '"' {
                // r#"..."#: ends at a quote followed by as many hashes.
                let start = i + hashes + 1;
                let mut end = start;
                while end < chars.len()
                    && !(chars[end] == '"' && (1..=hashes).all(|k| at(end + k) == '#'))
                {
                    end += 1;
                }
                out.push(Token::Str(
                    chars[start..end.min(chars.len())].iter().collect(),
                ));
                i = end + 1 + hashes;
            } else if word == "r" && hashes == 1 && (at(i + 1).is_alphabetic() || at(i + 1) == '_')
            {
                // r#type: a raw identifier, read on the next turn.
                i += 1;
            } else if matches!(word.as_str(), "b" | "c") && at(i) == '"' {
                // b"...": the string is read on the next turn.
            } else {
                out.push(Token::Ident(word));
            }
        } else if c == ':' && at(i + 1) == ':' {
            out.push(Token::PathSep);
            i += 2;
        } else {
            out.push(Token::Punct(c));
            i += 1;
        }
    }
    out
}

/// The top-level modules among `names` that `text` reaches from the crate root; `depth` is
/// how far the file's own module is below the root (1 for `x.rs` and `d/mod.rs`).
fn references(text: &str, depth: usize, names: &BTreeSet<String>) -> BTreeSet<String> {
    let tokens = tokens(text);
    let ident = |i: usize, word: &str| matches!(tokens.get(i), Some(Token::Ident(w)) if w == word);
    let sep = |i: usize| tokens.get(i) == Some(&Token::PathSep);
    let mut found = BTreeSet::new();
    // Each open brace, and whether it opens an inline `mod name { ... }`.
    let mut braces: Vec<bool> = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let after_sep = i > 0 && sep(i - 1);
        match token {
            Token::Punct('{') => {
                let module = i >= 2
                    && ident(i - 2, "mod")
                    && matches!(tokens.get(i - 1), Some(Token::Ident(_)));
                braces.push(module);
            }
            Token::Punct('}') => {
                braces.pop();
            }
            Token::Ident(word) if word == "crate" && !after_sep && sep(i + 1) => {
                found.extend(heads(&tokens, i + 2));
            }
            Token::Ident(word) if word == "super" && !after_sep && sep(i + 1) => {
                let mut climbs = 1;
                while ident(i + 2 * climbs, "super") && sep(i + 2 * climbs + 1) {
                    climbs += 1;
                }
                let level = depth + braces.iter().filter(|&&module| module).count();
                if climbs == level {
                    found.extend(heads(&tokens, i + 2 * climbs));
                }
            }
            Token::Str(text) => {
                if let Some(path) = text.strip_prefix("crate::")
                    && path
                        .chars()
                        .all(|c| c.is_alphanumeric() || c == '_' || c == ':')
                {
                    found.insert(path.split("::").next().unwrap_or_default().to_owned());
                }
            }
            _ => {}
        }
    }
    found.retain(|name| names.contains(name));
    found
}

/// The first segment of the path at `i`, or of each path in the use group that opens there.
fn heads(tokens: &[Token], i: usize) -> Vec<String> {
    match tokens.get(i) {
        Some(Token::Ident(name)) => vec![name.clone()],
        Some(Token::Punct('{')) => {
            let mut heads = Vec::new();
            let mut depth = 0;
            let mut starts_item = true;
            for token in &tokens[i..] {
                match token {
                    Token::Punct('{') => {
                        depth += 1;
                        starts_item = depth == 1;
                        continue;
                    }
                    Token::Punct('}') => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    Token::Punct(',') if depth == 1 => {
                        starts_item = true;
                        continue;
                    }
                    Token::Ident(name) if starts_item && depth == 1 => heads.push(name.clone()),
                    _ => {}
                }
                starts_item = false;
            }
            heads
        }
        _ => Vec::new(),
    }
}

/// Every elementary cycle, each once, starting at its least module (a graph of twenty nodes:
/// a plain search is enough).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    fn walk(graph: &Graph, start: &str, path: &mut Vec<String>, found: &mut Vec<Vec<String>>) {
        let last = path.last().expect("path").clone();
        for next in &graph[&last] {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(start.to_owned());
                found.push(cycle);
            } else if next.as_str() > start && !path.contains(next) {
                path.push(next.clone());
                walk(graph, start, path, found);
                path.pop();
            }
        }
    }
    let mut found = Vec::new();
    for start in graph.keys() {
        walk(graph, start, &mut vec![start.clone()], &mut found);
    }
    found
}

/// The graph and its cycles, for `--nocapture` and for a failure.
fn describe(graph: &Graph, cycles: &[Vec<String>]) -> String {
    let mut text = String::from("module graph:\n");
    for (from, to) in graph {
        let to: Vec<&str> = to.iter().map(String::as_str).collect();
        writeln!(text, "  {from} -> {}", to.join(", ")).expect("string");
    }
    writeln!(text, "{} cycles:", cycles.len()).expect("string");
    text + &list(cycles)
}

fn list(cycles: &[Vec<String>]) -> String {
    let mut text = String::new();
    for cycle in cycles {
        writeln!(text, "  {}", cycle.join(" -> ")).expect("string");
    }
    text
}
