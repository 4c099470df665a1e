//! OpenAPI 3.0 document generated from the same route table the gateway
//! serves, so the docs cannot drift from the routes.

use std::collections::{BTreeMap, BTreeSet};

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use crate::descriptors::{RpcBinding, method_comments};
use crate::edge_auth::is_public_method;
use crate::routes::RouteTable;

/// How deep query parameters follow nested messages (`page.page_size`).
const MAX_QUERY_DEPTH: usize = 3;

pub fn document(table: &RouteTable<RpcBinding>) -> Value {
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut schemas = Schemas::default();
    for (http_method, template, binding) in table.iter() {
        let op = operation(binding, &mut schemas);
        paths.entry(template.openapi_path()).or_default().insert(http_method.to_ascii_lowercase(), op);
    }
    let mut components = schemas.done();
    components.insert(
        "Status".into(),
        json!({
            "type": "object",
            "properties": {
                "code": {"type": "integer", "format": "int32", "description": "gRPC status code"},
                "message": {"type": "string"},
                "details": {"type": "array", "items": {"type": "object", "properties": {"@type": {"type": "string"}}, "additionalProperties": {}}},
            },
        }),
    );
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "shopmesh API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "REST/JSON API of shopmesh, transcoded to gRPC by the gateway.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
        },
        "security": [{"bearerAuth": []}],
    })
}

fn operation(binding: &RpcBinding, schemas: &mut Schemas) -> Value {
    let method = &binding.method;
    let input = method.input();
    let mut op = Map::new();
    op.insert("operationId".into(), format!("{}_{}", method.parent_service().name(), method.name()).into());
    op.insert("tags".into(), json!([method.parent_service().name()]));
    if let Some(comments) = method_comments(method) {
        let summary = comments.split("\n\n").next().unwrap_or_default().replace('\n', " ");
        op.insert("summary".into(), summary.into());
        op.insert("description".into(), comments.into());
    }

    let mut params = Vec::new();
    let mut bound: BTreeSet<String> = BTreeSet::new();
    for var in binding.template.variables() {
        let name = var.field_path.join(".");
        let schema = crate::transcode::resolve_field_path(&input, &var.field_path)
            .ok()
            .and_then(|f| f.last().cloned())
            .map_or_else(|| json!({"type": "string"}), |f| schemas.field(&f));
        params.push(json!({"name": name, "in": "path", "required": true, "schema": schema}));
        bound.insert(var.field_path[0].clone());
    }
    match binding.body.as_deref() {
        Some("*") => {
            op.insert("requestBody".into(), request_body(schemas.message_ref(&input)));
        }
        Some(field) => {
            if let Some(f) = input.get_field_by_name(field) {
                op.insert("requestBody".into(), request_body(schemas.field(&f)));
                bound.insert(f.name().to_owned());
            }
            query_params(&input, "", &bound, 0, schemas, &mut params);
        }
        None => query_params(&input, "", &bound, 0, schemas, &mut params),
    }
    if !params.is_empty() {
        op.insert("parameters".into(), params.into());
    }

    let output = method.output();
    let ok_schema = match binding.response_body.as_deref().and_then(|f| output.get_field_by_name(f)) {
        Some(f) => schemas.field(&f),
        None => schemas.message_ref(&output),
    };
    op.insert(
        "responses".into(),
        json!({
            "200": {"description": "OK", "content": {"application/json": {"schema": ok_schema}}},
            "default": {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}},
        }),
    );
    if is_public_method(method.full_name()) {
        op.insert("security".into(), json!([]));
    }
    op.into()
}

fn request_body(schema: Value) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": schema}}})
}

/// Query parameters for every field the path and body do not bind: scalars
/// and repeated scalars, nested messages flattened with dots.
fn query_params(
    desc: &MessageDescriptor,
    prefix: &str,
    bound: &BTreeSet<String>,
    depth: usize,
    schemas: &mut Schemas,
    out: &mut Vec<Value>,
) {
    for field in desc.fields() {
        if depth == 0 && bound.contains(field.name()) || field.is_map() {
            continue;
        }
        let name = format!("{prefix}{}", field.name());
        match field.kind() {
            Kind::Message(m) if wkt_schema(m.full_name()).is_none() => {
                if !field.is_list() && depth + 1 < MAX_QUERY_DEPTH {
                    query_params(&m, &format!("{name}."), bound, depth + 1, schemas, out);
                }
            }
            _ => {
                let mut p = json!({"name": name, "in": "query", "schema": schemas.field(&field)});
                if field.is_list() {
                    p["style"] = "form".into();
                    p["explode"] = true.into();
                }
                out.push(p);
            }
        }
    }
}

/// Schemas of well-known types under the proto3 JSON mapping.
fn wkt_schema(full_name: &str) -> Option<Value> {
    Some(match full_name {
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => json!({"type": "string", "example": "1.5s"}),
        "google.protobuf.FieldMask" => json!({"type": "string", "example": "name,price"}),
        "google.protobuf.Struct" => json!({"type": "object", "additionalProperties": {}}),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({"type": "array", "items": {}}),
        "google.protobuf.Empty" => json!({"type": "object"}),
        "google.protobuf.Any" => json!({
            "type": "object",
            "properties": {"@type": {"type": "string"}},
            "additionalProperties": {},
        }),
        "google.protobuf.StringValue" => json!({"type": "string"}),
        "google.protobuf.BytesValue" => json!({"type": "string", "format": "byte"}),
        "google.protobuf.BoolValue" => json!({"type": "boolean"}),
        "google.protobuf.Int32Value" => json!({"type": "integer", "format": "int32"}),
        "google.protobuf.UInt32Value" => json!({"type": "integer", "format": "int64"}),
        "google.protobuf.Int64Value" => json!({"type": "string", "format": "int64"}),
        "google.protobuf.UInt64Value" => json!({"type": "string", "format": "uint64"}),
        "google.protobuf.FloatValue" => json!({"type": "number", "format": "float"}),
        "google.protobuf.DoubleValue" => json!({"type": "number", "format": "double"}),
        _ => return None,
    })
}

/// Collects `components/schemas` for every message reached from a route.
#[derive(Default)]
struct Schemas {
    done: BTreeMap<String, Value>,
}

impl Schemas {
    fn done(self) -> Map<String, Value> {
        self.done.into_iter().collect()
    }

    fn message_ref(&mut self, desc: &MessageDescriptor) -> Value {
        if let Some(wkt) = wkt_schema(desc.full_name()) {
            return wkt;
        }
        let name = desc.full_name().to_owned();
        if !self.done.contains_key(&name) {
            // Placeholder first: recursive messages must not loop.
            self.done.insert(name.clone(), Value::Null);
            let schema = self.message(desc);
            self.done.insert(name.clone(), schema);
        }
        json!({"$ref": format!("#/components/schemas/{name}")})
    }

    fn message(&mut self, desc: &MessageDescriptor) -> Value {
        let mut props = Map::new();
        for field in desc.fields() {
            props.insert(field.json_name().to_owned(), self.field(&field));
        }
        let mut schema = json!({"type": "object", "properties": props});
        if let Some(doc) = message_comments(desc) {
            schema["description"] = doc.into();
        }
        schema
    }

    fn field(&mut self, field: &FieldDescriptor) -> Value {
        if field.is_map()
            && let Kind::Message(entry) = field.kind()
        {
            let value = entry.map_entry_value_field();
            return json!({"type": "object", "additionalProperties": self.kind(&value.kind())});
        }
        let item = self.kind(&field.kind());
        if field.is_list() { json!({"type": "array", "items": item}) } else { item }
    }

    fn kind(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Double => json!({"type": "number", "format": "double"}),
            Kind::Float => json!({"type": "number", "format": "float"}),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({"type": "integer", "format": "int32"})
            }
            Kind::Uint32 | Kind::Fixed32 => json!({"type": "integer", "format": "int64"}),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                json!({"type": "string", "format": "int64"})
            }
            Kind::Uint64 | Kind::Fixed64 => json!({"type": "string", "format": "uint64"}),
            Kind::Bool => json!({"type": "boolean"}),
            Kind::String => json!({"type": "string"}),
            Kind::Bytes => json!({"type": "string", "format": "byte"}),
            Kind::Enum(e) => {
                let names: Vec<String> = e.values().map(|v| v.name().to_owned()).collect();
                json!({"type": "string", "enum": names})
            }
            Kind::Message(m) => self.message_ref(m),
        }
    }
}

fn message_comments(desc: &MessageDescriptor) -> Option<String> {
    let file = desc.parent_file();
    let info = file.file_descriptor_proto().source_code_info.as_ref()?;
    let loc = info.location.iter().find(|l| l.path == desc.path())?;
    let text = loc.leading_comments.as_deref()?.trim();
    (!text.is_empty()).then(|| text.lines().map(str::trim).collect::<Vec<_>>().join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptors::{load_pool, route_table};

    fn doc() -> Value {
        document(&route_table(&load_pool().unwrap()).unwrap())
    }

    #[test]
    fn operations_paths_and_security() {
        let d = doc();
        let cancel = &d["paths"]["/v1/orders/{id}:cancel"]["post"];
        assert_eq!(cancel["operationId"], "OrderService_CancelOrder");
        assert!(cancel["summary"].as_str().unwrap().starts_with("Cancels a PENDING"));
        assert_eq!(cancel["parameters"][0]["in"], "path");
        assert!(cancel.get("security").is_none(), "protected routes use the global scheme");
        let login = &d["paths"]["/v1/auth/login"]["post"];
        assert_eq!(login["security"], json!([]));
        assert_eq!(
            login["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/shopmesh.auth.v1.LoginRequest"
        );
        assert_eq!(d["components"]["securitySchemes"]["bearerAuth"]["scheme"], "bearer");
    }

    #[test]
    fn query_parameters_for_get() {
        let d = doc();
        let list = &d["paths"]["/v1/products"]["get"];
        let names: Vec<&str> =
            list["parameters"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert!(names.contains(&"page.page_size"), "{names:?}");
        assert!(names.contains(&"min_price_minor"));
        let batch = &d["paths"]["/v1/products:batchGet"]["get"]["parameters"][0];
        assert_eq!(batch["schema"]["type"], "array");
        // PATCH with body field: the path var is not a query parameter.
        let patch = &d["paths"]["/v1/products/{id}"]["patch"];
        let names: Vec<&str> =
            patch["parameters"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names, vec!["id", "update_mask"]);
    }

    #[test]
    fn schemas_follow_the_json_mapping() {
        let d = doc();
        let product = &d["components"]["schemas"]["shopmesh.catalog.v1.Product"]["properties"];
        assert_eq!(product["createdAt"]["format"], "date-time");
        assert_eq!(product["attributes"]["additionalProperties"]["type"], "string");
        let money = &d["components"]["schemas"]["shopmesh.common.v1.Money"]["properties"];
        assert_eq!(money["amountMinor"], json!({"type": "string", "format": "int64"}));
        let order = &d["components"]["schemas"]["shopmesh.order.v1.Order"]["properties"];
        assert_eq!(order["status"]["enum"][1], "ORDER_STATUS_PENDING");
        assert_eq!(order["lines"]["type"], "array");
        for (name, schema) in d["components"]["schemas"].as_object().unwrap() {
            assert!(!schema.is_null(), "{name} left as placeholder");
        }
    }
}
