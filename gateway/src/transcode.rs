//! HTTP request → request `DynamicMessage`, and response message → JSON,
//! following the `google.api.http` rules and the proto3 JSON mapping.
//!
//! Precedence when several sources set a field: body, then query, then path
//! (the path is part of the resource name, so it always wins).

use base64::Engine as _;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, SerializeOptions,
    Value,
};

use crate::descriptors::RpcBinding;
use crate::routes::{Binding, percent_decode};

/// A client mistake, reported as 400 with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

fn bad(msg: impl Into<String>) -> BadRequest {
    BadRequest(msg.into())
}

const FIELD_MASK: &str = "google.protobuf.FieldMask";

/// Resolves `a.b.c` (proto or JSON spellings) to field descriptors; every
/// step but the last must be a singular message field.
pub fn resolve_field_path(desc: &MessageDescriptor, path: &[String]) -> Result<Vec<FieldDescriptor>, String> {
    let mut fields = Vec::with_capacity(path.len());
    let mut current = desc.clone();
    for (i, name) in path.iter().enumerate() {
        let field = current
            .get_field_by_name(name)
            .or_else(|| current.get_field_by_json_name(name))
            .ok_or_else(|| format!("unknown field `{}`", path[..=i].join(".")))?;
        if i + 1 < path.len() {
            match field.kind() {
                Kind::Message(m) if !field.is_list() && !field.is_map() => current = m,
                _ => return Err(format!("`{}` is not a message field", path[..=i].join("."))),
            }
        }
        fields.push(field);
    }
    Ok(fields)
}

/// Builds the upstream request from route variables, query string and body.
pub fn build_request(
    binding: &RpcBinding,
    path_vars: &[Binding],
    query: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, BadRequest> {
    let input = binding.method.input();
    let mut msg = DynamicMessage::new(input.clone());
    let mut body_json = None;
    let mut body_field = None;
    match binding.body.as_deref() {
        Some("*") => {
            let json = parse_json(body, true)?;
            msg = deserialize(&input, &json)?;
            body_json = Some(json);
        }
        Some(field) => {
            let fd =
                input.get_field_by_name(field).ok_or_else(|| bad(format!("body field `{field}` does not exist")))?;
            let json = parse_json(body, false)?;
            // Wrapping the body under the field's name reuses the message
            // deserializer for any field kind and names errors `field.sub`.
            let wrapped = serde_json::json!({ fd.json_name(): json });
            msg = deserialize(&input, &wrapped)?;
            body_json = Some(json);
            body_field = Some(fd);
        }
        None => {}
    }
    if binding.body.as_deref() != Some("*")
        && let Some(query) = query
    {
        apply_query(&mut msg, query, body_field.as_ref())?;
    }
    for (path, value) in path_vars {
        let fields = resolve_field_path(&input, path).map_err(bad)?;
        set_value(&mut msg, &fields, value)?;
    }
    if binding.http_method == "PATCH"
        && let (Some(fd), Some(json)) = (&body_field, &body_json)
    {
        fill_update_mask(&mut msg, fd, json);
    }
    Ok(msg)
}

fn parse_json(body: &[u8], empty_is_object: bool) -> Result<serde_json::Value, BadRequest> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return if empty_is_object { Ok(serde_json::json!({})) } else { Err(bad("request body is required")) };
    }
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

fn options() -> DeserializeOptions {
    DeserializeOptions::new().deny_unknown_fields(true)
}

/// Proto3 JSON → message; on failure the message names the offending field.
pub fn deserialize(desc: &MessageDescriptor, json: &serde_json::Value) -> Result<DynamicMessage, BadRequest> {
    DynamicMessage::deserialize_with_options(desc.clone(), json, &options()).map_err(|e| {
        match locate_error(desc, json) {
            Some(path) if e.to_string().starts_with("unrecognized field name") => {
                bad(format!("unknown field `{path}`"))
            }
            Some(path) => bad(format!("invalid value for field `{path}`: {e}")),
            _ => bad(format!("invalid request body: {e}")),
        }
    })
}

/// Finds the deepest JSON key whose value alone fails to deserialize. serde's
/// errors say what was wrong but not where; clients need the where.
fn locate_error(desc: &MessageDescriptor, json: &serde_json::Value) -> Option<String> {
    let obj = json.as_object()?;
    for (key, value) in obj {
        let single = serde_json::json!({ key: value });
        if DynamicMessage::deserialize_with_options(desc.clone(), &single, &options()).is_ok() {
            continue;
        }
        let field = desc.get_field_by_json_name(key).or_else(|| desc.get_field_by_name(key));
        if let Some(field) = field
            && let Kind::Message(sub) = field.kind()
            && !field.is_list()
            && !field.is_map()
            && let Some(inner) = locate_error(&sub, value)
        {
            return Some(format!("{key}.{inner}"));
        }
        return Some(key.clone());
    }
    None
}

/// `?a=1&b.c=2&ids=x&ids=y`: dotted paths reach nested fields, repeated
/// keys append. Unknown names are rejected like unknown JSON fields.
fn apply_query(msg: &mut DynamicMessage, query: &str, body_field: Option<&FieldDescriptor>) -> Result<(), BadRequest> {
    let desc = msg.descriptor();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key, true);
        let value = percent_decode(value, true);
        let path: Vec<String> = key.split('.').map(str::to_owned).collect();
        let fields = resolve_field_path(&desc, &path).map_err(|e| bad(format!("query parameter `{key}`: {e}")))?;
        // The body owns that field; grpc-gateway ignores such parameters too.
        if body_field.is_some_and(|b| *b == fields[0]) {
            continue;
        }
        set_value(msg, &fields, &value).map_err(|e| bad(format!("query parameter `{key}`: {}", e.0)))?;
    }
    Ok(())
}

/// Sets (or appends, for repeated fields) a textual value at a field path.
fn set_value(msg: &mut DynamicMessage, fields: &[FieldDescriptor], raw: &str) -> Result<(), BadRequest> {
    let Some((last, parents)) = fields.split_last() else {
        return Ok(());
    };
    let mut current = msg;
    for field in parents {
        current = match current.get_field_mut(field) {
            Value::Message(m) => m,
            _ => return Err(bad(format!("`{}` is not a message field", field.name()))),
        };
    }
    if last.is_map() {
        return Err(bad(format!("map field `{}` cannot be set from a URL", last.name())));
    }
    let value = parse_scalar(last, raw)?;
    if last.is_list() {
        if let Value::List(items) = current.get_field_mut(last) {
            items.push(value);
        }
    } else {
        current.set_field(last, value);
    }
    Ok(())
}

/// Parses one URL value for a (possibly repeated) field's element kind.
pub fn parse_scalar(field: &FieldDescriptor, raw: &str) -> Result<Value, BadRequest> {
    let invalid = |what: &str| bad(format!("invalid {what} for field `{}`: {raw:?}", field.name()));
    Ok(match field.kind() {
        Kind::String => Value::String(raw.to_owned()),
        Kind::Bool => Value::Bool(match raw {
            "true" | "True" | "TRUE" | "t" | "T" | "1" => true,
            "false" | "False" | "FALSE" | "f" | "F" | "0" => false,
            _ => return Err(invalid("bool")),
        }),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(raw.parse().map_err(|_| invalid("int32"))?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(raw.parse().map_err(|_| invalid("int64"))?),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(raw.parse().map_err(|_| invalid("uint32"))?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(raw.parse().map_err(|_| invalid("uint64"))?),
        Kind::Float => Value::F32(raw.parse().map_err(|_| invalid("float"))?),
        Kind::Double => Value::F64(raw.parse().map_err(|_| invalid("double"))?),
        Kind::Bytes => {
            let engines = [
                &base64::engine::general_purpose::STANDARD,
                &base64::engine::general_purpose::URL_SAFE,
                &base64::engine::general_purpose::STANDARD_NO_PAD,
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ];
            let decoded = engines.iter().find_map(|e| e.decode(raw).ok());
            Value::Bytes(decoded.ok_or_else(|| invalid("base64 bytes"))?.into())
        }
        Kind::Enum(e) => match e.get_value_by_name(raw) {
            Some(v) => Value::EnumNumber(v.number()),
            None => Value::EnumNumber(raw.parse().map_err(|_| invalid("enum value"))?),
        },
        // Well-known types (Timestamp, FieldMask, wrappers) have a JSON
        // string or scalar form; reuse it.
        Kind::Message(m) => {
            let as_string = serde_json::Value::String(raw.to_owned());
            let as_literal = serde_json::from_str::<serde_json::Value>(raw).ok();
            let parsed = DynamicMessage::deserialize_with_options(m.clone(), &as_string, &options()).or_else(|e| {
                match &as_literal {
                    Some(lit) => DynamicMessage::deserialize_with_options(m.clone(), lit, &options()),
                    None => Err(e),
                }
            });
            Value::Message(parsed.map_err(|_| invalid(m.full_name()))?)
        }
    })
}

/// For PATCH with a body field and an unset `update_mask: FieldMask`,
/// derives the mask from the body's top-level keys, like grpc-gateway.
fn fill_update_mask(msg: &mut DynamicMessage, body_field: &FieldDescriptor, json: &serde_json::Value) {
    let desc = msg.descriptor();
    let Some(mask_field) = desc.get_field_by_name("update_mask") else {
        return;
    };
    let Kind::Message(mask_desc) = mask_field.kind() else {
        return;
    };
    if mask_desc.full_name() != FIELD_MASK || msg.has_field(&mask_field) {
        return;
    }
    let Kind::Message(body_desc) = body_field.kind() else {
        return;
    };
    let paths = derive_update_mask(&body_desc, json);
    let mut mask = DynamicMessage::new(mask_desc);
    mask.set_field_by_name("paths", Value::List(paths.into_iter().map(Value::String).collect()));
    msg.set_field(&mask_field, Value::Message(mask));
}

/// Top-level keys of a JSON object as proto (snake_case) field names.
pub fn derive_update_mask(desc: &MessageDescriptor, json: &serde_json::Value) -> Vec<String> {
    let Some(obj) = json.as_object() else {
        return Vec::new();
    };
    obj.keys()
        .map(|key| {
            desc.get_field_by_json_name(key)
                .or_else(|| desc.get_field_by_name(key))
                .map(|f| f.name().to_owned())
                .unwrap_or_else(|| camel_to_snake(key))
        })
        .collect()
}

fn camel_to_snake(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Response message → JSON bytes (camelCase, int64 as strings, enum names),
/// or just the `response_body` field when the rule names one. Fields at
/// their default are written too (`"lines": []`, `"active": false`), as
/// grpc-gateway does by default: a client never meets a missing key for a
/// field the contract has. Message fields that are unset are left out.
pub fn render_response(binding: &RpcBinding, msg: &DynamicMessage) -> Result<Vec<u8>, serde_json::Error> {
    let opts = SerializeOptions::new().skip_default_fields(false);
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut out);
    match binding.response_body.as_deref() {
        None => msg.serialize_with_options(&mut ser, &opts)?,
        Some(name) => {
            let Some(field) = msg.descriptor().get_field_by_name(name) else {
                msg.serialize_with_options(&mut ser, &opts)?;
                return Ok(out);
            };
            match msg.get_field(&field).as_ref() {
                Value::Message(inner) if !field.is_list() && !field.is_map() => {
                    inner.serialize_with_options(&mut ser, &opts)?
                }
                value => {
                    // Non-message fields have no standalone serializer: render
                    // a message holding only that field and unwrap it.
                    let mut only = DynamicMessage::new(msg.descriptor());
                    only.set_field(&field, value.clone());
                    let json = only.serialize_with_options(
                        serde_json::value::Serializer,
                        &opts.clone().skip_default_fields(false),
                    )?;
                    let inner = json.get(field.json_name()).cloned().unwrap_or_default();
                    return serde_json::to_vec(&inner);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptors::{load_pool, route_table};
    use crate::routes::RouteTable;

    fn table() -> RouteTable<RpcBinding> {
        route_table(&load_pool().unwrap()).unwrap()
    }

    fn build(method: &str, path: &str, body: &str) -> Result<serde_json::Value, BadRequest> {
        let table = table();
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        let (_, binding, vars) = table.lookup(method, path).expect("route");
        let msg = build_request(binding, &vars, query, body.as_bytes())?;
        Ok(msg
            .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new().use_proto_field_name(true))
            .unwrap())
    }

    #[test]
    fn query_params_fill_nested_repeated_and_both_spellings() {
        let got = build(
            "GET",
            "/v1/products?page.page_size=5&page.pageToken=abc&category=shoes&minPriceMinor=100&max_price_minor=900&q=red+shoe%21",
            "",
        )
        .unwrap();
        assert_eq!(
            got,
            serde_json::json!({
                "page": {"page_size": 5, "page_token": "abc"},
                "category": "shoes",
                "min_price_minor": "100",
                "max_price_minor": "900",
                "q": "red shoe!",
            })
        );
        let got = build("GET", "/v1/products:batchGet?ids=a&ids=b%2Fc", "").unwrap();
        assert_eq!(got, serde_json::json!({"ids": ["a", "b/c"]}));
    }

    #[test]
    fn query_params_reject_unknown_and_bad_values() {
        let e = build("GET", "/v1/products?nope=1", "").unwrap_err();
        assert!(e.0.contains("nope"), "{e}");
        let e = build("GET", "/v1/products?min_price_minor=abc", "").unwrap_err();
        assert!(e.0.contains("min_price_minor"), "{e}");
        let e = build("GET", "/v1/products?category.x=1", "").unwrap_err();
        assert!(e.0.contains("category"), "{e}");
    }

    #[test]
    fn scalar_parsing_covers_kinds() {
        let pool = load_pool().unwrap();
        let order = pool.get_message_by_name("shopmesh.order.v1.StatusChange").unwrap();
        let status = order.get_field_by_name("status").unwrap();
        assert_eq!(parse_scalar(&status, "ORDER_STATUS_PENDING").unwrap(), Value::EnumNumber(1));
        assert_eq!(parse_scalar(&status, "2").unwrap(), Value::EnumNumber(2));
        assert!(parse_scalar(&status, "PENDING").is_err());
        let changed = order.get_field_by_name("changed_at").unwrap();
        assert!(parse_scalar(&changed, "2024-01-02T03:04:05Z").is_ok());
        assert!(parse_scalar(&changed, "yesterday").is_err());
        let product = pool.get_message_by_name("shopmesh.catalog.v1.Product").unwrap();
        let active = product.get_field_by_name("active").unwrap();
        assert_eq!(parse_scalar(&active, "true").unwrap(), Value::Bool(true));
        assert_eq!(parse_scalar(&active, "0").unwrap(), Value::Bool(false));
        assert!(parse_scalar(&active, "yes").is_err());
        let count = pool
            .get_message_by_name("shopmesh.catalog.v1.Category")
            .unwrap()
            .get_field_by_name("product_count")
            .unwrap();
        assert_eq!(parse_scalar(&count, "9007199254740993").unwrap(), Value::I64(9007199254740993));
    }

    #[test]
    fn path_vars_and_body_star() {
        let got = build("POST", "/v1/orders/o%201:cancel", "").unwrap();
        assert_eq!(got, serde_json::json!({"id": "o 1"}));
        let got = build("POST", "/v1/auth/login", r#"{"email":"a@b.c","password":"pw"}"#).unwrap();
        assert_eq!(got["email"], "a@b.c");
        // Path wins over the body.
        let got = build("PUT", "/v1/inventory/p1", r#"{"productId":"other"}"#).unwrap();
        assert_eq!(got["product_id"], "p1");
    }

    #[test]
    fn body_errors_name_the_field() {
        let e = build("POST", "/v1/auth/login", r#"{"email": 5}"#).unwrap_err();
        assert!(e.0.contains("`email`"), "{e}");
        let e = build("POST", "/v1/auth/login", r#"{"emial": "x"}"#).unwrap_err();
        assert!(e.0.contains("emial"), "{e}");
        let e = build("POST", "/v1/products", r#"{"price": {"amountMinor": "lots"}}"#).unwrap_err();
        assert!(e.0.contains("`product.price.amountMinor`"), "{e}");
        let e = build("POST", "/v1/auth/login", r#"{"email": "#).unwrap_err();
        assert!(e.0.starts_with("invalid JSON body"), "{e}");
        let e = build("POST", "/v1/products", "").unwrap_err();
        assert!(e.0.contains("required"), "{e}");
    }

    #[test]
    fn body_field_and_update_mask_derivation() {
        let got = build(
            "PATCH",
            "/v1/products/p1",
            r#"{"name":"New","imageUrl":"x","price":{"currencyCode":"EUR","amountMinor":"5"}}"#,
        )
        .unwrap();
        assert_eq!(got["id"], "p1");
        assert_eq!(got["product"]["image_url"], "x");
        // FieldMask paths render in camelCase in JSON.
        assert_eq!(got["update_mask"], "imageUrl,name,price");

        // An explicit mask in the query is kept.
        let got = build("PATCH", "/v1/products/p1?updateMask=name", r#"{"name":"N","sku":"S"}"#).unwrap();
        assert_eq!(got["update_mask"], "name");
    }

    #[test]
    fn derive_mask_is_snake_case() {
        let pool = load_pool().unwrap();
        let desc = pool.get_message_by_name("shopmesh.user.v1.Profile").unwrap();
        let json = serde_json::json!({"name": "x", "phone": "1", "created_at": null, "somethingElse": 1});
        assert_eq!(derive_update_mask(&desc, &json), vec!["created_at", "name", "phone", "something_else"]);
    }

    #[test]
    fn response_rendering_uses_json_names() {
        let table = table();
        let (_, binding, _) = table.lookup("GET", "/v1/categories").unwrap();
        let desc = binding.method.output();
        let msg =
            deserialize(&desc, &serde_json::json!({"categories": [{"name": "shoes", "product_count": 3}]})).unwrap();
        let out: serde_json::Value = serde_json::from_slice(&render_response(binding, &msg).unwrap()).unwrap();
        assert_eq!(out, serde_json::json!({"categories": [{"name": "shoes", "productCount": "3"}]}));

        let mut with_body = binding.clone();
        with_body.response_body = Some("categories".into());
        let out: serde_json::Value = serde_json::from_slice(&render_response(&with_body, &msg).unwrap()).unwrap();
        assert_eq!(out[0]["name"], "shoes");
    }
}
