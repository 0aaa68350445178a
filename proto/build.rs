//! Compiles agent.proto with protox (pure Rust), so no system protoc is needed.
//!
//! With the `serde` feature (the controller's, never the agent's: its size budget)
//! every generated type derives `serde::Serialize`: events as `{"kmsg": {...}}`,
//! output bytes as (lossy) text, proto enums by name.

/// `#[cfg_attr(feature = "serde", ATTR)]`: the generated code is the same with and
/// without the feature; only the derive's expansion differs.
fn serde(attr: &str) -> String {
    format!("#[cfg_attr(feature = \"serde\", {attr})]")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["agent.proto"], ["proto"])?;
    let p = ".vexfs.agent.v1";
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .type_attribute(".", serde("derive(::serde::Serialize)"))
        .type_attribute(
            format!("{p}.Event.kind"),
            serde("serde(rename_all = \"snake_case\")"),
        )
        // `{"kmsg": {...}}`, not `{"kind": {"kmsg": ...}}` (a field attribute would
        // reach the oneof's variants too: prost matches paths by prefix).
        .message_attribute(
            format!("{p}.Event"),
            serde("serde(into = \"Option<event::Kind>\")"),
        )
        .field_attribute(
            format!("{p}.ExecRequest.stdin"),
            serde("serde(serialize_with = \"crate::json::lossy_utf8\")"),
        )
        .field_attribute(
            format!("{p}.ExecReply.stdout"),
            serde("serde(serialize_with = \"crate::json::lossy_utf8\")"),
        )
        .field_attribute(
            format!("{p}.ExecReply.stderr"),
            serde("serde(serialize_with = \"crate::json::lossy_utf8\")"),
        )
        .field_attribute(
            format!("{p}.ModuleReply.outcome"),
            serde("serde(serialize_with = \"crate::json::module_outcome\")"),
        )
        .field_attribute(
            format!("{p}.HungTask.source"),
            serde("serde(serialize_with = \"crate::json::hung_source\")"),
        )
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto/agent.proto");
    Ok(())
}
