//! The shape of the crate, held by tests: the modules of `filters/` form no import cycle
//! (a module's code, its tests aside, names only modules below it), so each layer can be read
//! without the ones above it:
//!
//! ```text
//! conversation, event, markup, json_end, seal, values, vocab   (no dependencies)
//! upstream (decoders of what servers send; the chat request)   → conversation, event
//! stage (meta, Stage, chain, what a config builds)            → conversation, event, upstream, store
//! stages (one file each)                                       → stage, store, tokens, …
//! pipeline (the one list of stages)                            → stage, stages, store
//! api (client edges and encoders)                              → stage, stages, store, upstream, …
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level modules each top-level module of `src` names (`crate::x`), in its code
/// outside `#[cfg(test)]` (tests sit at the end of a file, or in a `tests.rs` of their own).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    fn walk(dir: &Path, top: Option<&str>, graph: &mut BTreeMap<String, BTreeSet<String>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                walk(&path, Some(top.unwrap_or(&name)), graph);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || name == "tests" {
                continue;
            }
            let module = top.unwrap_or(&name).to_owned();
            // Test helpers and the crate root are not layers.
            if ["lib", "testing", "fuzz_targets"].contains(&module.as_str()) {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            let deps = graph.entry(module.clone()).or_default();
            for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (i, _) in line.match_indices("crate::") {
                    let dep: String = line[i + 7..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                    if !dep.is_empty() && dep != module {
                        deps.insert(dep);
                    }
                }
            }
        }
    }
    let mut graph = BTreeMap::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), None, &mut graph);
    graph
}

/// A path of imports from `from` back to itself, if there is one.
fn cycle_through(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![(from.to_owned(), vec![from.to_owned()])];
    let mut seen = BTreeSet::new();
    while let Some((at, path)) = stack.pop() {
        for next in graph.get(&at).into_iter().flatten() {
            if next == from {
                let mut p = path.clone();
                p.push(next.clone());
                return Some(p);
            }
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push((next.clone(), p));
            }
        }
    }
    None
}

#[test]
fn the_modules_of_filters_form_no_import_cycle() {
    let graph = imports();
    assert!(graph.contains_key("conversation") && graph.contains_key("stage"), "modules found: {graph:?}");
    for m in graph.keys() {
        if let Some(c) = cycle_through(&graph, m) {
            panic!("an import cycle: {}", c.join(" → "));
        }
    }
}

#[test]
fn no_stage_and_no_upstream_edge_names_a_client_api() {
    let graph = imports();
    for m in ["stage", "stages", "upstream", "conversation", "pipeline", "store"] {
        assert!(!graph.get(m).is_some_and(|d| d.contains("api")), "{m} imports api: {:?}", graph[m]);
    }
}
