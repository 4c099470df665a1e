//! Reads `google.api.http` rules out of the embedded descriptor set and turns
//! them into a route table. This is the only place that knows the HttpRule
//! message shape.

use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, ReflectMessage, Value};

use crate::routes::{PathTemplate, RouteTable, TemplateError};

/// Every shopmesh proto, with imports, source info and options.
pub static DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/shopmesh.binpb"));

/// What an HTTP route transcodes to.
#[derive(Debug, Clone)]
pub struct RpcBinding {
    pub method: MethodDescriptor,
    pub http_method: String,
    pub template: PathTemplate,
    /// `None`: no body; `Some("*")`: the whole request; `Some(field)`.
    pub body: Option<String>,
    pub response_body: Option<String>,
}

impl RpcBinding {
    pub fn service_name(&self) -> &str {
        self.method.parent_service().full_name()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DescriptorError {
    #[error("decoding descriptor set: {0}")]
    Decode(#[from] prost_reflect::DescriptorError),
    #[error("{method}: {source}")]
    Template {
        method: String,
        #[source]
        source: TemplateError,
    },
    #[error("{method}: {reason}")]
    Rule { method: String, reason: String },
}

pub fn load_pool() -> Result<DescriptorPool, DescriptorError> {
    Ok(DescriptorPool::decode(DESCRIPTOR_SET)?)
}

/// Builds the route table from every annotated unary method in the pool.
/// Streaming methods are skipped: JSON transcoding here is unary only.
pub fn route_table(pool: &DescriptorPool) -> Result<RouteTable<RpcBinding>, DescriptorError> {
    let mut table = RouteTable::default();
    let Some(ext) = pool.get_extension_by_name("google.api.http") else {
        return Ok(table);
    };
    for service in pool.services() {
        for method in service.methods() {
            if method.is_client_streaming() || method.is_server_streaming() {
                continue;
            }
            let options = method.options();
            if !options.has_extension(&ext) {
                continue;
            }
            let Value::Message(rule) = options.get_extension(&ext).into_owned() else {
                continue;
            };
            let mut rules = vec![rule.clone()];
            if let Some(Value::List(extra)) = get(&rule, "additional_bindings") {
                rules.extend(extra.into_iter().filter_map(|v| match v {
                    Value::Message(m) => Some(m),
                    _ => None,
                }));
            }
            for rule in rules {
                let binding = binding_from_rule(&method, &rule)?;
                table.insert(&binding.http_method.clone(), binding.template.clone(), binding);
            }
        }
    }
    Ok(table)
}

fn get(msg: &DynamicMessage, name: &str) -> Option<Value> {
    let field = msg.descriptor().get_field_by_name(name)?;
    msg.has_field(&field).then(|| msg.get_field(&field).into_owned())
}

fn get_str(msg: &DynamicMessage, name: &str) -> Option<String> {
    match get(msg, name)? {
        Value::String(s) if !s.is_empty() => Some(s),
        _ => None,
    }
}

fn binding_from_rule(method: &MethodDescriptor, rule: &DynamicMessage) -> Result<RpcBinding, DescriptorError> {
    let rule_err = |reason: String| DescriptorError::Rule { method: method.full_name().to_owned(), reason };
    let mut pattern = None;
    for verb in ["get", "put", "post", "delete", "patch"] {
        if let Some(path) = get_str(rule, verb) {
            pattern = Some((verb.to_ascii_uppercase(), path));
        }
    }
    if let Some(Value::Message(custom)) = get(rule, "custom")
        && let (Some(kind), Some(path)) = (get_str(&custom, "kind"), get_str(&custom, "path"))
    {
        pattern = Some((kind.to_ascii_uppercase(), path));
    }
    let (http_method, path) = pattern.ok_or_else(|| rule_err("http rule has no pattern".into()))?;
    let template = PathTemplate::parse(&path)
        .map_err(|source| DescriptorError::Template { method: method.full_name().to_owned(), source })?;
    let input = method.input();
    for var in template.variables() {
        crate::transcode::resolve_field_path(&input, &var.field_path)
            .map_err(|e| rule_err(format!("path variable: {e}")))?;
    }
    let body = get_str(rule, "body");
    if let Some(field) = body.as_deref().filter(|b| *b != "*") {
        input.get_field_by_name(field).ok_or_else(|| rule_err(format!("body field `{field}` does not exist")))?;
    }
    let response_body = get_str(rule, "response_body");
    if let Some(field) = &response_body {
        method
            .output()
            .get_field_by_name(field)
            .ok_or_else(|| rule_err(format!("response_body field `{field}` does not exist")))?;
    }
    Ok(RpcBinding { method: method.clone(), http_method, template, body, response_body })
}

/// Leading comments of a method from the file's source info, trimmed.
pub fn method_comments(method: &MethodDescriptor) -> Option<String> {
    let file = method.parent_file();
    let info = file.file_descriptor_proto().source_code_info.as_ref()?;
    let location = info.location.iter().find(|l| l.path == method.path())?;
    let text = location.leading_comments.as_deref()?.trim();
    (!text.is_empty()).then(|| text.lines().map(str::trim).collect::<Vec<_>>().join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_annotated_shopmesh_rpc_is_routed() {
        let pool = load_pool().unwrap();
        let table = route_table(&pool).unwrap();
        let (tpl, b, vars) = table.lookup("POST", "/v1/orders/o-1:cancel").unwrap();
        assert_eq!(tpl.as_str(), "/v1/orders/{id}:cancel");
        assert_eq!(b.method.full_name(), "shopmesh.order.v1.OrderService.CancelOrder");
        assert_eq!(b.body.as_deref(), Some("*"));
        assert_eq!(vars, vec![(vec!["id".to_owned()], "o-1".to_owned())]);

        let (_, b, _) = table.lookup("GET", "/v1/products:batchGet").unwrap();
        assert_eq!(b.method.name(), "BatchGetProducts");
        let (_, b, _) = table.lookup("PATCH", "/v1/products/p1").unwrap();
        assert_eq!(b.body.as_deref(), Some("product"));
        assert_eq!(b.service_name(), "shopmesh.catalog.v1.CatalogService");
        let (_, b, _) = table.lookup("GET", "/.well-known/jwks.json").unwrap();
        assert_eq!(b.method.name(), "GetJwks");
    }

    #[test]
    fn comments_come_from_source_info() {
        let pool = load_pool().unwrap();
        let m = pool
            .get_service_by_name("shopmesh.auth.v1.AuthService")
            .unwrap()
            .methods()
            .find(|m| m.name() == "Login")
            .unwrap();
        assert_eq!(
            method_comments(&m).as_deref(),
            Some("Exchanges email and password for an access and a refresh token.")
        );
    }
}
