//! Build-script helper shared by every crate that compiles shopmesh protos.
//!
//! It pins the vendored `protoc`, sets the include paths (our `proto/`, the
//! vendored googleapis under `proto/third_party/`, and protoc's well-known
//! types), maps the shared `common`/`events` packages onto the platform crate,
//! and writes a file descriptor set next to the generated code for server
//! reflection and the gateway.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Proto packages generated once, in `shopmesh-platform`, and referenced by
/// every other crate instead of being generated again.
const SHARED_PACKAGES: &[(&str, &str)] = &[
    (".shopmesh.common.v1", "::shopmesh_platform::pb::common::v1"),
    (".shopmesh.events.v1", "::shopmesh_platform::pb::events::v1"),
];

/// Root of the repository's `proto/` directory.
pub fn proto_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto")
}

fn includes() -> Vec<PathBuf> {
    let root = proto_root();
    vec![
        root.clone(),
        root.join("third_party"),
        protoc_bin_vendored::include_path().expect("vendored protoc include path"),
    ]
}

fn use_vendored_protoc() {
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc binary");
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("PROTOC", protoc) };
}

fn out_dir() -> PathBuf {
    PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo"))
}

/// Generates Rust code (messages, tonic server and client) for `files`
/// (paths relative to `proto/`) and writes `descriptor.bin` into `OUT_DIR`.
///
/// `shared` is true only for the platform crate, which owns the shared
/// packages; every other crate maps them onto the platform's types.
pub fn compile(files: &[&str], shared: bool) {
    use_vendored_protoc();
    let root = proto_root();
    println!("cargo:rerun-if-changed={}", root.display());
    let mut builder = tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .file_descriptor_set_path(out_dir().join("descriptor.bin"));
    if !shared {
        for (proto, rust) in SHARED_PACKAGES {
            builder = builder.extern_path(*proto, *rust);
        }
    }
    let paths: Vec<PathBuf> = files.iter().map(|f| root.join(f)).collect();
    builder.compile_protos(&paths, &includes()).unwrap_or_else(|e| panic!("compiling {files:?}: {e}"));
}

/// Writes a descriptor set (with imports and source info, so comments and
/// `google.api.http` options survive) of every shopmesh proto to
/// `OUT_DIR/<name>`, without generating code. The gateway loads it.
pub fn descriptor_set_of_all(name: &str) {
    use_vendored_protoc();
    let root = proto_root();
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    collect_protos(&root.join("shopmesh"), &mut files);
    files.sort();
    // Standard error details, so the gateway can render them as JSON.
    files.push(root.join("third_party/google/rpc/error_details.proto"));
    let mut cmd = Command::new(protoc_bin_vendored::protoc_bin_path().unwrap());
    for inc in includes() {
        cmd.arg(format!("-I{}", inc.display()));
    }
    cmd.arg("--include_imports")
        .arg("--include_source_info")
        .arg(format!("--descriptor_set_out={}", out_dir().join(name).display()))
        .args(&files);
    let status = cmd.status().expect("running protoc");
    assert!(status.success(), "protoc failed building {name}");
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading proto dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            collect_protos(&path, out);
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
}
