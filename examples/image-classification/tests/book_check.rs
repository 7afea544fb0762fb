//! The book's code comes only from compiled files: every `{{#include path:anchor}}` in book/src
//! must name an existing file and, with an anchor, a `ANCHOR: name` / `ANCHOR_END: name` pair.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn chapters(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("book/src") {
        let p = e.unwrap().path();
        if p.is_dir() {
            chapters(&p, out);
        } else if p.extension().is_some_and(|e| e == "md") {
            out.push(p);
        }
    }
}

#[test]
fn book_includes_resolve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    chapters(&root.join("book/src"), &mut files);
    assert!(files.len() > 3, "book chapters");
    let (mut checked, mut errors) = (0, Vec::new());
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (i, _) in text.match_indices("{{#") {
            if text[..i].ends_with('\\') {
                continue; // escaped: mdBook prints it literally
            }
            let rest = &text[i + 3..];
            let Some(end) = rest.find("}}") else { continue };
            let directive = rest[..end].trim();
            let Some(spec) = directive
                .strip_prefix("include")
                .or_else(|| directive.strip_prefix("rustdoc_include"))
            else {
                errors.push(format!(
                    "{}: unsupported {{{{#{directive}}}}}",
                    file.display()
                ));
                continue;
            };
            let spec = spec.trim();
            let (path, anchor) = match spec.split_once(':') {
                Some((p, a)) => (p, Some(a)),
                None => (spec, None),
            };
            let target = file.parent().unwrap().join(path);
            checked += 1;
            let Ok(source) = std::fs::read_to_string(&target) else {
                errors.push(format!("{}: missing file {path}", file.display()));
                continue;
            };
            if let Some(anchor) = anchor {
                if anchor.chars().all(|c| c.is_ascii_digit() || c == ':') {
                    continue; // a line range
                }
                let has = |marker: &str| {
                    source.lines().any(|l| {
                        l.trim_start()
                            .trim_start_matches("//")
                            .trim_start_matches('#')
                            .trim()
                            == format!("{marker}: {anchor}")
                    })
                };
                if !has("ANCHOR") || !has("ANCHOR_END") {
                    errors.push(format!(
                        "{}: {path} has no anchor `{anchor}`",
                        file.display()
                    ));
                }
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert!(checked >= 8, "only {checked} includes");
    // No hand-written Rust in the book: code blocks with Rust come from includes.
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let mut in_rust = false;
        for line in text.lines() {
            if line.starts_with("```") {
                in_rust = line.starts_with("```rust") && !in_rust;
                continue;
            }
            if in_rust && !line.trim().is_empty() && !line.contains("{{#include") {
                panic!("{}: Rust code outside an include: {line}", file.display());
            }
        }
    }
}

/// The README's Rust snippet is a verbatim excerpt of the quickstart, which CI compiles.
#[test]
fn readme_snippet_is_compiled_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let main = std::fs::read_to_string(root.join("examples/quickstart/src/main.rs")).unwrap();
    let mut blocks = readme.split("```rust\n").skip(1);
    let snippet = blocks.next().expect("a rust block in README.md");
    let snippet = &snippet[..snippet.find("```").expect("closed block")];
    assert!(snippet.lines().count() > 10, "{snippet}");
    assert!(
        main.contains(snippet),
        "README.md's Rust snippet is not a verbatim part of examples/quickstart/src/main.rs:\n{snippet}"
    );
    assert!(blocks.next().is_none(), "one Rust block in README.md");
}

/// The book shows each example's results plot from a copy under `book/src/img` (mdBook serves
/// only files below `book/src`): the copy must be the plot the example's README shows.
#[test]
fn book_result_plots_are_the_examples() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for example in ["image-classification", "table-to-text"] {
        let read =
            |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let plot = read(root.join(format!("examples/{example}/results/results.svg")));
        let copy = read(root.join(format!("book/src/img/{example}-results.svg")));
        assert!(
            plot == copy,
            "book/src/img/{example}-results.svg differs from examples/{example}/results/results.svg: copy it"
        );
    }
}

/// A line before a listing that shows an example's own code on purpose (the examples chapter, how
/// the examples pick their backend): `<!-- example code: why -->`. Such listings may name the
/// examples' shared crate and helpers; every other listing is code a user of the crates could
/// write.
const EXAMPLE_CODE_MARK: &str = "<!-- example code:";

/// The book's listings use what a user of the crates can use:
/// - no `crate::`, `super::`, `self::` paths and no `pub(crate)` items (code from inside a crate);
/// - a listing from inside a library crate (`crates/*/src`, `models/*/src`, not `src/bin`) names
///   none of the crates' private or `pub(crate)` items declared in other files (it could, as code
///   of the crate; listings from anywhere else cannot, since they compile against the public API);
/// - unless marked with [`EXAMPLE_CODE_MARK`], no `common::` path (the examples' shared crate)
///   and no item declared in the examples' sources (`examples/*/src`, helpers such as
///   `PrivateRun`, flag structs) other than in the listing's own file and not also a public item
///   of the crates: a listing presents the library's API, not the examples'.
#[test]
fn book_listings_use_public_api() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let sources = |pattern: &[&str]| {
        let mut out = Vec::new();
        for top in pattern {
            for krate in std::fs::read_dir(root.join(top)).unwrap() {
                let src = krate.unwrap().path().join("src");
                if src.is_dir() {
                    rust_files(&src, &mut out);
                }
            }
        }
        out
    };
    let (mut public, mut private) = (HashSet::new(), HashSet::new());
    for file in sources(&["crates", "models"]) {
        for d in declarations(&std::fs::read_to_string(&file).unwrap()) {
            match d.vis {
                Vis::Pub => {
                    public.insert(d.name);
                }
                // Top-level private items and restricted methods; not trait-impl methods.
                Vis::Restricted | Vis::Private if d.top_level || d.vis == Vis::Restricted => {
                    private.insert(d.name);
                }
                _ => {}
            }
        }
    }
    let private: HashSet<String> = private.difference(&public).cloned().collect();
    let mut example_items = HashSet::new();
    for file in sources(&["examples"]) {
        for d in declarations(&std::fs::read_to_string(&file).unwrap()) {
            if (d.top_level || d.vis == Vis::Pub) && !public.contains(&d.name) {
                example_items.insert(d.name);
            }
        }
    }
    assert!(
        example_items.contains("PrivateRun") && private.len() > 20,
        "declarations parsed"
    );

    let mut files = Vec::new();
    chapters(&root.join("book/src"), &mut files);
    let (mut checked, mut errors) = (0, Vec::new());
    for chapter in &files {
        let text = std::fs::read_to_string(chapter).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(spec) = line
                .trim()
                .strip_prefix("{{#include ")
                .and_then(|s| s.strip_suffix("}}"))
            else {
                continue;
            };
            let (path, anchor) = spec.split_once(':').unwrap_or((spec, ""));
            if !path.ends_with(".rs") {
                continue;
            }
            let target = chapter.parent().unwrap().join(path);
            let source = std::fs::read_to_string(&target).unwrap();
            let listing = if anchor.is_empty() {
                source.clone()
            } else {
                let start = source.find(&format!("ANCHOR: {anchor}")).unwrap();
                let end = source.find(&format!("ANCHOR_END: {anchor}")).unwrap();
                source[start..end].to_string()
            };
            let marked = i >= 2 && lines[i - 2].trim_start().starts_with(EXAMPLE_CODE_MARK);
            let own: HashSet<String> = declarations(&source).into_iter().map(|d| d.name).collect();
            let in_library = (path.contains("/crates/") || path.contains("/models/"))
                && path.contains("/src/")
                && !path.contains("/src/bin/");
            let code = strip_comments_and_strings(&listing);
            let mut found = Vec::new();
            for p in ["crate::", "super::", "self::", "pub(crate)", "common::"] {
                if code.contains(p) && !(marked && p == "common::") {
                    found.push(format!("`{p}`"));
                }
            }
            for name in used_names(&code) {
                if own.contains(&name) {
                    continue; // declared in the listing's own file, which the chapter names
                }
                if in_library && private.contains(&name) && name.len() > 1 {
                    found.push(format!("the crate-private item `{name}`"));
                }
                if !marked && !own.contains(&name) && example_items.contains(&name) {
                    found.push(format!("the example-only item `{name}`"));
                }
            }
            checked += 1;
            if !found.is_empty() {
                found.sort();
                found.dedup();
                errors.push(format!(
                    "{}: the listing {spec} uses {}: include code that uses only the public API \
                     of the crates (e.g. from an integration test), or mark an example's own \
                     code with `{EXAMPLE_CODE_MARK} why -->` two lines above the include",
                    chapter.display(),
                    found.join(", ")
                ));
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert!(checked >= 8, "only {checked} Rust listings");
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Vis {
    Pub,
    Restricted,
    Private,
}

struct Declaration {
    name: String,
    vis: Vis,
    top_level: bool,
}

/// Items declared in Rust source, one per line that starts with `[vis] [qualifiers] keyword name`
/// (rustfmt's layout); private `type` aliases and `mod`s are left out (a listing's `type B = …`
/// or `mod tests` is local).
fn declarations(source: &str) -> Vec<Declaration> {
    let mut out = Vec::new();
    for line in strip_comments_and_strings(source).lines() {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let (vis, mut k) = match tokens.first() {
            Some(&"pub") => (Vis::Pub, 1),
            Some(t) if t.starts_with("pub(") => (Vis::Restricted, 1),
            _ => (Vis::Private, 0),
        };
        while k < tokens.len() && ["async", "const", "unsafe", "extern"].contains(&tokens[k]) {
            if tokens[k] == "const" && tokens.get(k + 1).is_some_and(|t| !is_keyword(t)) {
                break; // `const NAME`
            }
            k += 1;
        }
        let (Some(keyword), Some(name)) = (tokens.get(k), tokens.get(k + 1)) else {
            continue;
        };
        if !is_keyword(keyword) || (vis != Vis::Pub && ["type", "mod"].contains(keyword)) {
            continue;
        }
        let name: String = name
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.push(Declaration {
                name,
                vis,
                top_level: !line.starts_with(' '),
            });
        }
    }
    out
}

fn is_keyword(t: &str) -> bool {
    [
        "fn", "struct", "enum", "trait", "type", "const", "static", "mod", "union",
    ]
    .contains(&t)
}

/// The source without `//` comments and with string literals emptied (line by line).
fn strip_comments_and_strings(source: &str) -> String {
    let mut out = String::new();
    for line in source.lines() {
        let (mut in_string, mut escaped) = (false, false);
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if in_string {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_string = false;
                    out.push('"');
                }
            } else if c == '/' && chars.get(i + 1) == Some(&'/') {
                break;
            } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
                i += 2; // a char literal such as '"'
            } else {
                if c == '"' {
                    in_string = true;
                }
                out.push(c);
            }
            i += 1;
        }
        out.push('\n');
    }
    out
}

/// Names a listing uses as items: followed by `::`, `(`, `{`, `<` or `!`, or capitalised (types,
/// variants, constants).
fn used_names(code: &str) -> HashSet<String> {
    let chars: Vec<char> = code.chars().collect();
    let mut names = HashSet::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_alphabetic() || chars[i] == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let name: String = chars[start..i].iter().collect();
            let rest: String = chars[i..]
                .iter()
                .skip_while(|c| c.is_whitespace())
                .take(2)
                .collect();
            let capitalised = name.chars().next().is_some_and(|c| c.is_uppercase());
            let used_as_item = rest.starts_with("::") || rest.starts_with(['(', '{', '<', '!']);
            if capitalised || used_as_item {
                names.insert(name);
            }
        } else {
            i += 1;
        }
    }
    names
}
