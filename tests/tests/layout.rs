//! Workspace layout checks (STYLE.md §0, issue #17): no import cycle between the
//! files of a crate, and no file with more than [`MAX_NON_TEST_LINES`] lines of
//! non-test code.
//!
//! These read the sources; they build nothing and start no process.
//!
//! # How the file graph is built, and what it misses
//!
//! A small tokenizer drops comments, string, byte-string, raw-string and char
//! literals, then a scan over the tokens follows the module tree from the crate
//! roots (`src/lib.rs`, `src/main.rs`), reading:
//!
//! * `mod x;` — a child in its own file (`x.rs` or `x/mod.rs` beside the
//!   parent, or in the parent's directory when the parent is not a root or
//!   `mod.rs`). The declaration itself is *not* an edge: a parent owning a child
//!   is not a dependency. `mod x { … }` — an inline module, part of its file.
//! * `use` trees (groups, globs, `as`, `self`) and every other path that starts
//!   with `crate::`, `super::`, `self::` or the name of a child module
//!   (`svc::Handler` in `lib.rs`). The path is resolved to the deepest module it
//!   names; when the next segment is a name that module imports with `use`
//!   (a re-export such as `pub use reason::Reason` in `lib.rs`), the import is
//!   followed to the file that defines the item, so a re-export does not hide a
//!   dependency. A child's use of its parent (`use super::*`) is an edge.
//! * An edge joins two *files*; inline modules belong to their file.
//!
//! Limits (kept on purpose; the checker is meant to be read in one sitting):
//!
//! * Code under `#[cfg(test)]` on a `mod` (inline or in its own file) is left
//!   out: tests may reach anywhere. `#[cfg(test)]` on other items is not seen.
//! * `#[path = "…"]` on `mod`, `include!`, and macros used without a path
//!   (`#[macro_use]`, `macro_rules!` textual scope) are not followed.
//! * A glob import (`use x::*`) resolves names through `x` only when `x`
//!   defines or imports that name by a visible item keyword (`fn`, `struct`,
//!   `enum`, `trait`, `type`, `const`, `static`, `union`, `mod`,
//!   `macro_rules!`); otherwise the glob itself counts as a use of `x`.
//! * A child module is recognised by its bare name (`svc::Handler`) only
//!   after its `mod` line.
//! * `self` and `super` inside a function body refer to the enclosing module,
//!   which is what Rust does too; paths through local variables or generics
//!   are not paths to modules and are ignored.
//! * Names are not type-checked: a local item named like a child module and
//!   followed by `::` is taken for the module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Crates (directories beside `tests/`) whose files must form no import
/// cycle.
const ACYCLIC_CRATES: &[&str] = &[
    "child",
    "config",
    "proto",
    "pki",
    "policy",
    "transport",
    "store",
    "relay",
    "portal",
    "gateway",
    "agent",
    "agent/rdpfilter",
    "client",
    "demo",
];

/// Crates whose files stay under [`MAX_NON_TEST_LINES`] lines of non-test
/// code. May be empty.
const SHORT_FILE_CRATES: &[&str] = &[
    "child",
    "config",
    "proto",
    "pki",
    "policy",
    "transport",
    "store",
    "relay",
    "portal",
    "gateway",
    "agent",
    "agent/rdpfilter",
    "client",
    "demo",
];

/// A file past this many lines before its `#[cfg(test)]` module has more than
/// one job (STYLE.md §0).
const MAX_NON_TEST_LINES: usize = 1_000;

#[test]
fn no_file_level_import_cycle() {
    let mut failures = Vec::new();
    for krate in ACYCLIC_CRATES {
        let sources = read_crate(krate);
        for root in ["lib.rs", "main.rs"] {
            if !sources.contains_key(Path::new(root)) {
                continue;
            }
            let graph = FileGraph::build(&sources, Path::new(root));
            if let Some(cycle) = graph.find_cycle() {
                failures.push(format!("{krate}/src (from {root}): {}", show_cycle(&cycle)));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "file-level import cycles (move the shared items to a module below both):\n  {}",
        failures.join("\n  ")
    );
}

#[test]
fn no_long_non_test_file() {
    let mut failures = Vec::new();
    for krate in SHORT_FILE_CRATES {
        let sources = read_crate(krate);
        let mut files = BTreeSet::new();
        for root in ["lib.rs", "main.rs"] {
            if sources.contains_key(Path::new(root)) {
                files.extend(FileGraph::build(&sources, Path::new(root)).files);
            }
        }
        for file in files {
            let lines = non_test_lines(&sources[&file]);
            if lines > MAX_NON_TEST_LINES {
                failures.push(format!(
                    "{krate}/src/{}: {lines} lines before #[cfg(test)]",
                    file.display()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "files over {MAX_NON_TEST_LINES} lines of non-test code (split by job):\n  {}",
        failures.join("\n  ")
    );
}

/// Every `.rs` file under `<krate>/src`, keyed by its path relative to `src`.
fn read_crate(krate: &str) -> BTreeMap<PathBuf, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("src");
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
                let rel = path.strip_prefix(&src).expect("under src").to_path_buf();
                out.insert(rel, text);
            }
        }
    }
    assert!(!out.is_empty(), "no sources under {}", src.display());
    out
}

/// Lines of a file before its first top-level `#[cfg(test)]`.
fn non_test_lines(text: &str) -> usize {
    text.lines()
        .position(|l| l.trim_end() == "#[cfg(test)]")
        .unwrap_or_else(|| text.lines().count())
}

fn show_cycle(cycle: &[PathBuf]) -> String {
    let mut names: Vec<String> = cycle.iter().map(|p| p.display().to_string()).collect();
    names.push(names[0].clone());
    names.join(" -> ")
}

// ---------------------------------------------------------------------------
// Tokens

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
}

/// Identifiers and punctuation of Rust source, without comments, literals and
/// lifetimes.
fn tokenize(src: &str) -> Vec<Tok> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let ident_start = |ch: char| ch == '_' || ch.is_alphabetic();
    let ident_char = |ch: char| ch == '_' || ch.is_alphanumeric();
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            // Block comments nest in Rust.
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if let Some(end) = raw_string_end(&c, i) {
            i = end;
        } else if ch == '"' || (ch == 'b' && next == Some('"')) {
            i += if ch == 'b' { 2 } else { 1 };
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if ch == '\'' || (ch == 'b' && next == Some('\'')) {
            let start = if ch == 'b' { i + 1 } else { i };
            if c.get(start + 1) == Some(&'\\') {
                // Escaped char literal: '\n', '\'', '\u{..}'.
                i = start + 3;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(start + 2) == Some(&'\'') {
                i = start + 3;
            } else if ch == 'b' {
                out.push(Tok::Ident("b".into()));
                i += 1;
            } else {
                // A lifetime or label: skip the quote and the name.
                i += 1;
                while i < c.len() && ident_char(c[i]) {
                    i += 1;
                }
            }
        } else if ident_start(ch) {
            let start = i;
            while i < c.len() && ident_char(c[i]) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            // Raw identifiers: r#type.
            if word == "r"
                && c.get(i) == Some(&'#')
                && c.get(i + 1).is_some_and(|&n| ident_start(n))
            {
                i += 1;
                let start = i;
                while i < c.len() && ident_char(c[i]) {
                    i += 1;
                }
                out.push(Tok::Ident(c[start..i].iter().collect()));
            } else {
                out.push(Tok::Ident(word));
            }
        } else if ch.is_ascii_digit() {
            while i < c.len()
                && (ident_char(c[i])
                    || c[i] == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit))
            {
                i += 1;
            }
        } else if ch == ':' && next == Some(':') {
            out.push(Tok::PathSep);
            i += 2;
        } else {
            out.push(Tok::Punct(ch));
            i += 1;
        }
    }
    out
}

/// If a raw (byte) string starts at `i`, the index just past it.
fn raw_string_end(c: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if c.get(j) == Some(&'b') {
        j += 1;
    }
    if c.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while c.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    if c.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < c.len() {
        if c[j] == '"' && (1..=hashes).all(|k| c.get(j + k) == Some(&'#')) {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(j)
}

// ---------------------------------------------------------------------------
// Module tree and file graph

/// A module path from the crate root (`[]` is the root).
type ModPath = Vec<String>;

#[derive(Debug, Default)]
struct Module {
    file: PathBuf,
    children: BTreeSet<String>,
    /// Names this module defines.
    items: BTreeSet<String>,
    /// Names this module imports: name → absolute path it stands for.
    imports: BTreeMap<String, ModPath>,
    /// Modules whose names it imports with `use x::*`.
    globs: Vec<ModPath>,
    /// Absolute paths used in this module (from `use` and from code).
    uses: Vec<ModPath>,
}

/// The files of one crate (one root) and which file uses which.
#[derive(Debug)]
struct FileGraph {
    files: BTreeSet<PathBuf>,
    edges: BTreeMap<PathBuf, BTreeSet<PathBuf>>,
}

impl FileGraph {
    /// Follows `mod` declarations from `root` through `sources` (paths
    /// relative to `src/`) and resolves every use to the file defining it.
    fn build(sources: &BTreeMap<PathBuf, String>, root: &Path) -> FileGraph {
        let mut modules: BTreeMap<ModPath, Module> = BTreeMap::new();
        let mut pending = vec![(Vec::new(), root.to_path_buf())];
        while let Some((path, file)) = pending.pop() {
            let Some(text) = sources.get(&file) else {
                continue; // `mod x;` with no file: the compiler will say so.
            };
            let tokens = tokenize(text);
            let owns_dir = file == root || file.file_name().is_some_and(|n| n == "mod.rs");
            let dir = if owns_dir {
                file.parent().unwrap_or(Path::new("")).to_path_buf()
            } else {
                file.with_extension("")
            };
            for child in scan_file(&tokens, &path, &file, &mut modules) {
                let mut child_path = path.clone();
                child_path.push(child.clone());
                let flat = dir.join(format!("{child}.rs"));
                let nested = dir.join(&child).join("mod.rs");
                let child_file = if sources.contains_key(&flat) {
                    flat
                } else {
                    nested
                };
                pending.push((child_path, child_file));
            }
        }

        let files = modules.values().map(|m| m.file.clone()).collect();
        let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
        for module in modules.values() {
            for used in &module.uses {
                if let Some(target) = resolve(&modules, used, 0) {
                    if target != module.file {
                        edges.entry(module.file.clone()).or_default().insert(target);
                    }
                }
            }
        }
        FileGraph { files, edges }
    }

    /// One cycle of files, if any (depth-first search, colours in a map).
    fn find_cycle(&self) -> Option<Vec<PathBuf>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Open,
            Done,
        }
        fn visit(
            g: &FileGraph,
            node: &PathBuf,
            marks: &mut BTreeMap<PathBuf, Mark>,
            stack: &mut Vec<PathBuf>,
        ) -> Option<Vec<PathBuf>> {
            marks.insert(node.clone(), Mark::Open);
            stack.push(node.clone());
            for next in g.edges.get(node).into_iter().flatten() {
                match marks.get(next) {
                    Some(Mark::Open) => {
                        let from = stack.iter().position(|n| n == next).expect("on stack");
                        return Some(stack[from..].to_vec());
                    }
                    Some(Mark::Done) => {}
                    None => {
                        if let Some(cycle) = visit(g, next, marks, stack) {
                            return Some(cycle);
                        }
                    }
                }
            }
            stack.pop();
            marks.insert(node.clone(), Mark::Done);
            None
        }
        let mut marks = BTreeMap::new();
        for node in &self.files {
            if !marks.contains_key(node) {
                if let Some(cycle) = visit(self, node, &mut marks, &mut Vec::new()) {
                    return Some(cycle);
                }
            }
        }
        None
    }
}

/// The file that defines what `path` names: the deepest module on the path,
/// then through that module's imports when the next segment is one.
fn resolve(modules: &BTreeMap<ModPath, Module>, path: &[String], depth: usize) -> Option<PathBuf> {
    let mut at: ModPath = Vec::new();
    let mut rest = path;
    while let Some((first, tail)) = rest.split_first() {
        let module = modules.get(&at)?;
        if module.children.contains(first) {
            at.push(first.clone());
            rest = tail;
            continue;
        }
        if depth < 16 && !module.items.contains(first) {
            if let Some(target) = module.imports.get(first) {
                let mut full = target.clone();
                full.extend(tail.iter().cloned());
                return resolve(modules, &full, depth + 1);
            }
            for glob in &module.globs {
                let provides = modules.get(glob).is_some_and(|g| {
                    g.items.contains(first)
                        || g.imports.contains_key(first)
                        || g.children.contains(first)
                });
                if provides {
                    let mut full = glob.clone();
                    full.extend(rest.iter().cloned());
                    return resolve(modules, &full, depth + 1);
                }
            }
        }
        break;
    }
    modules.get(&at).map(|m| m.file.clone())
}

/// Scans one file whose top module is `path`, filling `modules` for it and its
/// inline modules; returns the names of child modules that live in files.
fn scan_file(
    tokens: &[Tok],
    path: &ModPath,
    file: &Path,
    modules: &mut BTreeMap<ModPath, Module>,
) -> Vec<String> {
    let new_module = |file: &Path| Module {
        file: file.to_path_buf(),
        ..Module::default()
    };
    modules.insert(path.clone(), new_module(file));
    let mut file_children = Vec::new();
    // (module path, brace depth at which its body closes)
    let mut stack: Vec<(ModPath, usize)> = vec![(path.clone(), 0)];
    let mut depth = 0usize;
    let mut cfg_test = false;
    let mut i = 0;
    while i < tokens.len() {
        let current = stack.last().expect("root stays").0.clone();
        match &tokens[i] {
            Tok::Punct('#') => {
                // An attribute: remember `#[cfg(test)]` for the next item.
                let open = if tokens.get(i + 1) == Some(&Tok::Punct('!')) {
                    i + 2
                } else {
                    i + 1
                };
                let Some(end) = matching(tokens, open, '[', ']') else {
                    i += 1;
                    continue;
                };
                let body = &tokens[open..end];
                if body.windows(4).any(|w| {
                    w == [
                        Tok::Ident("cfg".into()),
                        Tok::Punct('('),
                        Tok::Ident("test".into()),
                        Tok::Punct(')'),
                    ]
                }) {
                    cfg_test = true;
                }
                i = end + 1;
                continue;
            }
            Tok::Punct('{') => {
                cfg_test = false;
                depth += 1;
            }
            Tok::Punct('}') => {
                cfg_test = false;
                depth = depth.saturating_sub(1);
                if stack.len() > 1 && stack.last().is_some_and(|(_, d)| *d == depth) {
                    stack.pop();
                }
            }
            Tok::Punct(';') => cfg_test = false,
            Tok::Ident(word) if word == "mod" => {
                if let (Some(Tok::Ident(name)), Some(next)) = (tokens.get(i + 1), tokens.get(i + 2))
                {
                    let skip = std::mem::take(&mut cfg_test);
                    if *next == Tok::Punct(';') {
                        if !skip {
                            modules
                                .get_mut(&current)
                                .expect("scanned")
                                .children
                                .insert(name.clone());
                            if current == *path {
                                file_children.push(name.clone());
                            }
                            // An inline module's file children would live in a
                            // subdirectory; none of ours do, so they are not followed.
                        }
                        i += 3;
                        continue;
                    }
                    if *next == Tok::Punct('{') {
                        if skip {
                            i = matching(tokens, i + 2, '{', '}').unwrap_or(tokens.len()) + 1;
                            continue;
                        }
                        modules
                            .get_mut(&current)
                            .expect("scanned")
                            .children
                            .insert(name.clone());
                        let mut inner = current.clone();
                        inner.push(name.clone());
                        modules.insert(inner.clone(), new_module(file));
                        stack.push((inner, depth));
                        depth += 1;
                        i += 3;
                        continue;
                    }
                }
            }
            Tok::Ident(word) if word == "use" => {
                cfg_test = false;
                let end = tokens[i..]
                    .iter()
                    .position(|t| *t == Tok::Punct(';'))
                    .map_or(tokens.len(), |p| i + p);
                let mut leaves = Vec::new();
                use_tree(&tokens[i + 1..end], Vec::new(), &mut leaves);
                for (segments, alias) in leaves {
                    let module = modules.get(&current).expect("scanned");
                    let Some(abs) = absolute(module, &current, &segments) else {
                        continue;
                    };
                    let module = modules.get_mut(&current).expect("scanned");
                    match alias.as_deref() {
                        Some("*") => module.globs.push(abs.clone()),
                        Some("_") => {}
                        Some(name) => {
                            module.imports.insert(name.to_string(), abs.clone());
                        }
                        None => {}
                    }
                    module.uses.push(abs);
                }
                i = end + 1;
                continue;
            }
            Tok::Ident(word)
                if matches!(
                    word.as_str(),
                    "fn" | "struct" | "enum" | "trait" | "type" | "const" | "static" | "union"
                ) || word == "macro_rules" =>
            {
                let name_at = if word == "macro_rules" { i + 2 } else { i + 1 };
                if let Some(Tok::Ident(name)) = tokens.get(name_at) {
                    modules
                        .get_mut(&current)
                        .expect("scanned")
                        .items
                        .insert(name.clone());
                }
            }
            Tok::Ident(first) if tokens.get(i + 1) == Some(&Tok::PathSep) => {
                let after_sep = i > 0 && tokens[i - 1] == Tok::PathSep;
                if !after_sep {
                    let mut segments = vec![first.clone()];
                    let mut j = i + 1;
                    while tokens.get(j) == Some(&Tok::PathSep) {
                        match tokens.get(j + 1) {
                            Some(Tok::Ident(s)) => segments.push(s.clone()),
                            _ => break,
                        }
                        j += 2;
                    }
                    let module = modules.get(&current).expect("scanned");
                    if let Some(abs) = absolute(module, &current, &segments) {
                        modules.get_mut(&current).expect("scanned").uses.push(abs);
                    }
                    i = j;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    file_children
}

/// The index of the token closing the group opened at `open_at`.
fn matching(tokens: &[Tok], open_at: usize, open: char, close: char) -> Option<usize> {
    if tokens.get(open_at) != Some(&Tok::Punct(open)) {
        return None;
    }
    let mut depth = 0;
    for (k, t) in tokens.iter().enumerate().skip(open_at) {
        if *t == Tok::Punct(open) {
            depth += 1;
        } else if *t == Tok::Punct(close) {
            depth -= 1;
            if depth == 0 {
                return Some(k);
            }
        }
    }
    None
}

/// Makes a path absolute from the crate root when it is one of ours
/// (`crate::`, `super::`, `self::`, or a child module's name); `None` for
/// paths into other crates, `std`, locals and types.
fn absolute(module: &Module, current: &ModPath, segments: &[String]) -> Option<ModPath> {
    let (first, rest) = segments.split_first()?;
    let mut abs = match first.as_str() {
        "crate" => Vec::new(),
        "self" => current.clone(),
        "super" => {
            let mut p = current.clone();
            p.pop();
            let mut rest = rest;
            while rest.first().is_some_and(|s| s == "super") {
                p.pop();
                rest = &rest[1..];
            }
            p.extend(rest.iter().cloned());
            return Some(p);
        }
        _ if module.children.contains(first) => {
            let mut p = current.clone();
            p.push(first.clone());
            p
        }
        _ => return None,
    };
    abs.extend(rest.iter().cloned());
    Some(abs)
}

/// Expands a `use` tree into its leaves: (path, name it brings in), where the
/// name is `"*"` for a glob and the path ends at the module for `self`.
fn use_tree(tokens: &[Tok], prefix: Vec<String>, out: &mut Vec<(Vec<String>, Option<String>)>) {
    let mut path = prefix;
    let mut i = 0;
    // Leading `::` (2015-style absolute path) or `pub`/visibility tokens never
    // reach here: `use` is matched after them.
    while i < tokens.len() {
        match &tokens[i] {
            Tok::Ident(s) if s == "as" => {
                let alias = match tokens.get(i + 1) {
                    Some(Tok::Ident(a)) => a.clone(),
                    _ => "_".into(),
                };
                out.push((path, Some(alias)));
                return;
            }
            Tok::Ident(s) if s == "self" && !path.is_empty() => {
                // `a::b::{self}` brings in `b`.
                let alias = path.last().cloned();
                if tokens.get(i + 1) == Some(&Tok::Ident("as".into())) {
                    i += 1;
                    continue;
                }
                out.push((path, alias));
                return;
            }
            Tok::Ident(s) => path.push(s.clone()),
            Tok::PathSep => {}
            Tok::Punct('*') => {
                out.push((path, Some("*".into())));
                return;
            }
            Tok::Punct('{') => {
                let end = matching(tokens, i, '{', '}').unwrap_or(tokens.len());
                let inner = &tokens[i + 1..end.min(tokens.len())];
                let mut depth = 0;
                let mut start = 0;
                for (k, t) in inner.iter().enumerate() {
                    match t {
                        Tok::Punct('{') => depth += 1,
                        Tok::Punct('}') => depth -= 1,
                        Tok::Punct(',') if depth == 0 => {
                            use_tree(&inner[start..k], path.clone(), out);
                            start = k + 1;
                        }
                        _ => {}
                    }
                }
                if start < inner.len() {
                    use_tree(&inner[start..], path.clone(), out);
                }
                return;
            }
            _ => {}
        }
        i += 1;
    }
    if !path.is_empty() {
        let name = path.last().cloned();
        out.push((path, name));
    }
}

// ---------------------------------------------------------------------------
// The checker checked, on crates that exist only in memory.

fn synthetic(files: &[(&str, &str)]) -> FileGraph {
    let sources = files
        .iter()
        .map(|(p, t)| (PathBuf::from(p), (*t).to_string()))
        .collect();
    FileGraph::build(&sources, Path::new("lib.rs"))
}

fn edge(g: &FileGraph, from: &str, to: &str) -> bool {
    g.edges
        .get(Path::new(from))
        .is_some_and(|e| e.contains(Path::new(to)))
}

#[test]
fn synthetic_cycle_is_found() {
    let g = synthetic(&[
        ("lib.rs", "pub mod a;\npub mod b;\n"),
        ("a.rs", "use crate::b::Thing;\npub struct Other;\n"),
        (
            "b.rs",
            "pub struct Thing;\nfn f() -> super::a::Other { todo!() }\n",
        ),
    ]);
    let cycle = g.find_cycle().expect("a <-> b is a cycle");
    assert_eq!(show_cycle(&cycle), "a.rs -> b.rs -> a.rs");
}

#[test]
fn synthetic_tree_without_cycle_passes() {
    // Parent declares children (not an edge), re-exports them (lib -> a, b),
    // a uses b through the re-export (resolved to b), a child module uses a
    // shared type one level down.
    let g = synthetic(&[
        (
            "lib.rs",
            "//! use crate::a::X; (a comment, not a use)\n\
             mod a;\nmod b;\nmod shared;\n\
             pub use a::{X, Y as Why};\npub use b::*;\n\
             #[cfg(test)]\nmod tests { use crate::a::X; use super::b::Z; }\n",
        ),
        ("a.rs", "use crate::{Z, shared::Kind};\npub struct X; pub struct Y;\nconst S: &str = \"crate::b::Z\";\n"),
        ("b.rs", "pub struct Z;\nmod inner { use super::super::shared::Kind as K; }\n"),
        ("shared.rs", "pub enum Kind {}\n"),
    ]);
    assert!(g.find_cycle().is_none(), "{:?}", g.edges);
    assert!(edge(&g, "lib.rs", "a.rs") && edge(&g, "lib.rs", "b.rs"));
    assert!(
        edge(&g, "a.rs", "b.rs"),
        "re-export followed: {:?}",
        g.edges
    );
    assert!(edge(&g, "a.rs", "shared.rs") && edge(&g, "b.rs", "shared.rs"));
    assert!(!edge(&g, "a.rs", "lib.rs") && !edge(&g, "b.rs", "a.rs"));
}

#[test]
fn synthetic_child_using_parent_item_closes_a_cycle() {
    // lib.rs uses the child; the child uses an item defined in lib.rs.
    let g = synthetic(&[
        (
            "lib.rs",
            "mod svc;\nuse svc::Handler;\npub struct Filter;\n",
        ),
        (
            "svc.rs",
            "use super::*;\npub trait Handler { fn f(&self, _: &crate::Filter); }\n",
        ),
    ]);
    let cycle = g.find_cycle().expect("lib <-> svc is a cycle");
    assert_eq!(cycle.len(), 2);
}

#[test]
fn synthetic_nested_files_resolve() {
    let g = synthetic(&[
        ("lib.rs", "mod decide;\n"),
        (
            "decide.rs",
            "#[cfg(test)]\nmod tests;\nmod steps;\nfn f() { steps::go() }\n",
        ),
        (
            "decide/steps.rs",
            "pub fn go() { let _ = super::super::decide::h; }\n",
        ),
        ("decide/tests.rs", "use super::*;\n"),
    ]);
    assert!(g.files.contains(Path::new("decide/steps.rs")));
    assert!(
        !g.files.contains(Path::new("decide/tests.rs")),
        "cfg(test) files are left out"
    );
    let cycle = g.find_cycle().expect("decide <-> steps");
    assert_eq!(
        show_cycle(&cycle),
        "decide/steps.rs -> decide.rs -> decide/steps.rs"
    );
}

#[test]
fn tokenizer_skips_literals_and_lifetimes() {
    let toks = tokenize("fn f<'a>(x: &'a str) { let _ = ('{', \"}\", r#\"\"}\"#, b'x', '\\''); }");
    let braces = toks
        .iter()
        .filter(|t| matches!(t, Tok::Punct('{' | '}')))
        .count();
    assert_eq!(braces, 2, "{toks:?}");
}
