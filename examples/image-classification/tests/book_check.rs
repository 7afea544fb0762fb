//! The book's code comes only from compiled files: every `{{#include path:anchor}}` in book/src
//! must name an existing file and, with an anchor, a `ANCHOR: name` / `ANCHOR_END: name` pair.

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
