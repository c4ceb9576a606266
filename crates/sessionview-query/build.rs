//! Embeds the third-party browser assets of the GraphiQL page (GraphiQL and React, npm registry
//! packages pinned in `scripts/tools/web-assets.lock`, fetched by `scripts/tools/web-assets`) so
//! that the binary serves them itself: from `$SESSIONVIEW_WEB_ASSETS`, else from
//! `.sessionview/tools/web-assets` in the workspace. Without them the crate still builds (with a
//! warning) and `/graphiql` says how to get them; nothing is fetched here.

use std::path::{Path, PathBuf};

/// (name served under /assets/vendor/, path in the assets directory, content type).
const FILES: [(&str, &str, &str); 4] = [
    (
        "graphiql.min.js",
        "graphiql/graphiql.min.js",
        "text/javascript; charset=utf-8",
    ),
    (
        "graphiql.min.css",
        "graphiql/graphiql.min.css",
        "text/css; charset=utf-8",
    ),
    (
        "react.production.min.js",
        "react/umd/react.production.min.js",
        "text/javascript; charset=utf-8",
    ),
    (
        "react-dom.production.min.js",
        "react-dom/umd/react-dom.production.min.js",
        "text/javascript; charset=utf-8",
    ),
];

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let workspace = manifest.join("../..");
    println!("cargo::rerun-if-env-changed=SESSIONVIEW_WEB_ASSETS");
    let dir = std::env::var_os("SESSIONVIEW_WEB_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join(".sessionview/tools/web-assets"));
    let marker = dir.join("installed");
    let present = marker.is_file() && FILES.iter().all(|(_, p, _)| dir.join(p).is_file());
    let mut code =
        String::from("/// The embedded third-party assets: (name, content type, bytes).\n");
    code.push_str("pub(crate) const VENDOR: &[(&str, &str, &[u8])] = &[\n");
    if present {
        println!("cargo::rerun-if-changed={}", marker.display());
        for (name, path, content_type) in FILES {
            let file = dir.join(path);
            println!("cargo::rerun-if-changed={}", file.display());
            code.push_str(&format!(
                "    ({name:?}, {content_type:?}, include_bytes!({:?})),\n",
                absolute(&file)
            ));
        }
    } else {
        // Noticed when the tools directory changes (scripts/tools/web-assets fills it).
        let tools = workspace.join(".sessionview/tools");
        let watched = if tools.is_dir() {
            tools
        } else {
            workspace.join("scripts/tools/web-assets.lock")
        };
        println!("cargo::rerun-if-changed={}", watched.display());
        println!(
            "cargo::warning=GraphiQL's assets are not in {}: /graphiql will say so. Run \
             scripts/tools/web-assets (or set SESSIONVIEW_WEB_ASSETS) before building.",
            dir.display()
        );
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("vendor.rs");
    if let Err(e) = std::fs::write(&out, code) {
        println!("cargo::error=cannot write {}: {e}", out.display());
    }
}

fn absolute(path: &Path) -> String {
    path.canonicalize()
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}
