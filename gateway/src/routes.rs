//! `google.api.http` path templates: parsing and matching. Pure: no
//! descriptors, no I/O, so the grammar is tested on its own.
//!
//! Grammar (from google/api/http.proto):
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb     = ":" LITERAL ;
//! ```

use std::cmp::Ordering;

/// One matcher per path segment after variables are expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    Single,
    /// `**`: zero or more segments; only allowed last.
    Multi,
}

/// A variable spans segments `start..end` of the expanded template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub field_path: Vec<String>,
    start: usize,
    end: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    raw: String,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    verb: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid path template `{template}`: {reason}")]
pub struct TemplateError {
    pub template: String,
    pub reason: String,
}

/// A path variable bound by a match: field path and URL-decoded value.
pub type Binding = (Vec<String>, String);

impl PathTemplate {
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let err = |reason: &str| TemplateError { template: template.to_owned(), reason: reason.to_owned() };
        let rest = template.strip_prefix('/').ok_or_else(|| err("must start with `/`"))?;
        // The verb is after the last `:` outside braces.
        let (path, verb) = split_verb(rest).map_err(&err)?;
        if let Some(v) = &verb
            && (v.is_empty() || v.contains('/'))
        {
            return Err(err("bad verb"));
        }
        let mut segments = Vec::new();
        let mut variables = Vec::new();
        for part in split_top_level(path).map_err(&err)? {
            if let Some(inner) = part.strip_prefix('{') {
                let inner = inner.strip_suffix('}').ok_or_else(|| err("unclosed `{`"))?;
                let (field, sub) = match inner.split_once('=') {
                    Some((f, s)) => (f, s),
                    None => (inner, "*"),
                };
                let field_path: Vec<String> = field.split('.').map(str::to_owned).collect();
                if field_path.iter().any(|f| !is_ident(f)) {
                    return Err(err("bad field path in variable"));
                }
                let start = segments.len();
                for s in sub.split('/') {
                    segments.push(plain_segment(s).ok_or_else(|| err("bad segment in variable"))?);
                }
                variables.push(Variable { field_path, start, end: segments.len() });
            } else {
                segments.push(plain_segment(part).ok_or_else(|| err("bad segment"))?);
            }
        }
        if let Some(pos) = segments.iter().position(|s| *s == Segment::Multi)
            && pos != segments.len() - 1
        {
            return Err(err("`**` must be the last segment"));
        }
        Ok(Self { raw: template.to_owned(), segments, variables, verb })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn variables(&self) -> &[Variable] {
        &self.variables
    }

    pub fn verb(&self) -> Option<&str> {
        self.verb.as_deref()
    }

    /// Matches a raw (still percent-encoded) request path; returns the
    /// variable bindings with decoded values.
    pub fn matches(&self, path: &str) -> Option<Vec<Binding>> {
        let rest = path.strip_prefix('/')?;
        let rest = match &self.verb {
            // The verb is matched literally, so a variable value that itself
            // contains `:` still works for verb-less templates.
            Some(verb) => rest.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => rest,
        };
        let parts: Vec<&str> = if rest.is_empty() { Vec::new() } else { rest.split('/').collect() };
        let multi = self.segments.last() == Some(&Segment::Multi);
        let fixed = self.segments.len() - usize::from(multi);
        if parts.len() < fixed || (!multi && parts.len() != fixed) {
            return None;
        }
        for (seg, part) in self.segments[..fixed].iter().zip(&parts) {
            match seg {
                Segment::Literal(lit) if lit != part => return None,
                Segment::Single if part.is_empty() => return None,
                _ => {}
            }
        }
        let bindings = self
            .variables
            .iter()
            .map(|v| {
                let end = if v.end == self.segments.len() && multi { parts.len() } else { v.end };
                let value = parts[v.start..end].iter().map(|p| percent_decode(p, false)).collect::<Vec<_>>().join("/");
                (v.field_path.clone(), value)
            })
            .collect();
        Some(bindings)
    }

    /// Orders two templates that both matched a path: literals beat `*`,
    /// `*` beats `**`, and a verb beats none.
    pub fn specificity_cmp(&self, other: &Self) -> Ordering {
        let rank = |s: &Segment| match s {
            Segment::Literal(_) => 2,
            Segment::Single => 1,
            Segment::Multi => 0,
        };
        let a = self.segments.iter().map(rank);
        let b = other.segments.iter().map(rank);
        a.cmp(b).then_with(|| self.verb.is_some().cmp(&other.verb.is_some()))
    }

    /// The OpenAPI form: `{field.path}` for every variable, verb kept.
    pub fn openapi_path(&self) -> String {
        let mut out = String::new();
        let mut i = 0;
        while i < self.segments.len() {
            out.push('/');
            if let Some(v) = self.variables.iter().find(|v| v.start == i) {
                out.push('{');
                out.push_str(&v.field_path.join("."));
                out.push('}');
                i = v.end.max(i + 1);
                continue;
            }
            match &self.segments[i] {
                Segment::Literal(l) => out.push_str(l),
                Segment::Single => out.push('*'),
                Segment::Multi => out.push_str("**"),
            }
            i += 1;
        }
        if self.segments.is_empty() {
            out.push('/');
        }
        if let Some(v) = &self.verb {
            out.push(':');
            out.push_str(v);
        }
        out
    }
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn plain_segment(s: &str) -> Option<Segment> {
    match s {
        "*" => Some(Segment::Single),
        "**" => Some(Segment::Multi),
        "" => None,
        lit if lit.contains(['{', '}', '=', ':']) => None,
        lit => Some(Segment::Literal(lit.to_owned())),
    }
}

/// Splits `path:verb` at the last `:` that is not inside `{}`.
fn split_verb(s: &str) -> Result<(&str, Option<String>), &'static str> {
    let mut depth = 0i32;
    let mut colon = None;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ':' if depth == 0 => colon = Some(i),
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err("unbalanced braces");
        }
    }
    if depth != 0 {
        return Err("unbalanced braces");
    }
    Ok(match colon {
        Some(i) => (&s[..i], Some(s[i + 1..].to_owned())),
        None => (s, None),
    })
}

/// Splits on `/` outside braces (a variable's sub-template contains `/`).
fn split_top_level(s: &str) -> Result<Vec<&str>, &'static str> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            '/' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    Ok(out)
}

/// Decodes `%XX` escapes (and `+` as space when `plus_is_space`, for query
/// strings). Invalid escapes are kept verbatim rather than rejected.
pub fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' && i + 2 < bytes.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if plus_is_space && b == b'+' { b' ' } else { b });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a lookup failed: no template matches the path at all, or some do but
/// not for this method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    NotFound,
    MethodNotAllowed { allowed: Vec<String> },
}

/// HTTP method + template → payload. Lookup scans every route: the table is
/// a few dozen entries and built once, so clarity beats a trie.
#[derive(Debug, Clone)]
pub struct RouteTable<T> {
    routes: Vec<(String, PathTemplate, T)>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        Self { routes: Vec::new() }
    }
}

impl<T> RouteTable<T> {
    pub fn insert(&mut self, method: &str, template: PathTemplate, value: T) {
        self.routes.push((method.to_ascii_uppercase(), template, value));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &PathTemplate, &T)> {
        self.routes.iter().map(|(m, t, v)| (m.as_str(), t, v))
    }

    pub fn lookup(&self, method: &str, path: &str) -> Result<(&PathTemplate, &T, Vec<Binding>), LookupError> {
        let mut best: Option<(&PathTemplate, &T, Vec<Binding>)> = None;
        let mut allowed: Vec<String> = Vec::new();
        for (m, template, value) in &self.routes {
            let Some(bindings) = template.matches(path) else {
                continue;
            };
            if !m.eq_ignore_ascii_case(method) {
                if !allowed.contains(m) {
                    allowed.push(m.clone());
                }
                continue;
            }
            let better = match &best {
                None => true,
                Some((b, _, _)) => template.specificity_cmp(b) == Ordering::Greater,
            };
            if better {
                best = Some((template, value, bindings));
            }
        }
        match best {
            Some(found) => Ok(found),
            None if allowed.is_empty() => Err(LookupError::NotFound),
            None => {
                allowed.sort();
                Err(LookupError::MethodNotAllowed { allowed })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> PathTemplate {
        PathTemplate::parse(s).unwrap()
    }

    fn vars(b: Vec<Binding>) -> Vec<(String, String)> {
        b.into_iter().map(|(f, v)| (f.join("."), v)).collect()
    }

    #[test]
    fn literal_template_matches_exactly() {
        let tpl = t("/v1/products");
        assert_eq!(tpl.matches("/v1/products"), Some(vec![]));
        assert_eq!(tpl.matches("/v1/products/"), None);
        assert_eq!(tpl.matches("/v1/product"), None);
        assert_eq!(tpl.matches("/v1/products/x"), None);
        assert_eq!(tpl.matches("v1/products"), None);
    }

    #[test]
    fn single_variable_binds_decoded_value() {
        let tpl = t("/v1/products/{id}");
        assert_eq!(vars(tpl.matches("/v1/products/a%20b%2Fc").unwrap()), vec![("id".into(), "a b/c".into())]);
        assert_eq!(tpl.matches("/v1/products/"), None, "empty segment is not a value");
        assert_eq!(tpl.matches("/v1/products/a/b"), None);
    }

    #[test]
    fn nested_field_path() {
        let tpl = t("/v1/shelves/{shelf.id}/books/{book.meta.id}");
        assert_eq!(
            vars(tpl.matches("/v1/shelves/s1/books/b2").unwrap()),
            vec![("shelf.id".into(), "s1".into()), ("book.meta.id".into(), "b2".into())]
        );
    }

    #[test]
    fn variable_with_sub_template() {
        let tpl = t("/v1/{name=shelves/*/books/*}");
        assert_eq!(
            vars(tpl.matches("/v1/shelves/1/books/2").unwrap()),
            vec![("name".into(), "shelves/1/books/2".into())]
        );
        assert_eq!(tpl.matches("/v1/shelves/1/novels/2"), None);
    }

    #[test]
    fn double_star_matches_rest() {
        let tpl = t("/v1/files/{path=**}");
        assert_eq!(vars(tpl.matches("/v1/files/a/b/c.txt").unwrap()), vec![("path".into(), "a/b/c.txt".into())]);
        assert_eq!(vars(tpl.matches("/v1/files").unwrap()), vec![("path".into(), "".into())]);
        let anon = t("/static/**");
        assert!(anon.matches("/static/x/y").is_some());
        assert!(t("/v1/*/items").matches("/v1/abc/items").is_some());
    }

    #[test]
    fn custom_verbs() {
        let cancel = t("/v1/orders/{id}:cancel");
        assert_eq!(cancel.verb(), Some("cancel"));
        assert_eq!(vars(cancel.matches("/v1/orders/o-1:cancel").unwrap()), vec![("id".into(), "o-1".into())]);
        assert_eq!(cancel.matches("/v1/orders/o-1"), None);
        assert_eq!(cancel.matches("/v1/orders/o-1:refund"), None);

        let batch = t("/v1/products:batchGet");
        assert!(batch.matches("/v1/products:batchGet").is_some());
        assert!(batch.matches("/v1/products").is_none());
        assert!(t("/v1/products").matches("/v1/products:batchGet").is_none());

        let sub = t("/v1/{name=operations/**}:wait");
        assert_eq!(
            vars(sub.matches("/v1/operations/a/b:wait").unwrap()),
            vec![("name".into(), "operations/a/b".into())]
        );
    }

    #[test]
    fn verb_less_variable_may_contain_colon() {
        assert_eq!(vars(t("/v1/things/{id}").matches("/v1/things/a:b").unwrap()), vec![("id".into(), "a:b".into())]);
    }

    #[test]
    fn rejects_malformed_templates() {
        for bad in ["v1/x", "/v1/{id", "/v1/id}", "/v1/{}", "/v1/{a-b}", "/v1/**/x", "/v1//x", "/v1/x:", "/v1/{a={b}}"]
        {
            assert!(PathTemplate::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn openapi_path_rendering() {
        assert_eq!(t("/v1/orders/{id}:cancel").openapi_path(), "/v1/orders/{id}:cancel");
        assert_eq!(t("/v1/{name=shelves/*}/books").openapi_path(), "/v1/{name}/books");
        assert_eq!(t("/v1/{a.b}").openapi_path(), "/v1/{a.b}");
        assert_eq!(t("/.well-known/jwks.json").openapi_path(), "/.well-known/jwks.json");
    }

    fn table() -> RouteTable<&'static str> {
        let mut rt = RouteTable::default();
        rt.insert("GET", t("/v1/products"), "list");
        rt.insert("GET", t("/v1/products/{id}"), "get");
        rt.insert("GET", t("/v1/products:batchGet"), "batch");
        rt.insert("PATCH", t("/v1/products/{id}"), "update");
        rt.insert("DELETE", t("/v1/products/{id}"), "archive");
        rt.insert("GET", t("/v1/users/me"), "me");
        rt.insert("GET", t("/v1/users/{id}"), "user");
        rt.insert("GET", t("/v1/{name=**}"), "catchall");
        rt.insert("POST", t("/v1/orders/{id}:cancel"), "cancel");
        rt.insert("GET", t("/v1/orders/{id}"), "order");
        rt
    }

    #[test]
    fn literal_wins_over_variable() {
        let rt = table();
        assert_eq!(*rt.lookup("GET", "/v1/users/me").unwrap().1, "me");
        assert_eq!(*rt.lookup("GET", "/v1/users/42").unwrap().1, "user");
        assert_eq!(*rt.lookup("GET", "/v1/products:batchGet").unwrap().1, "batch");
        assert_eq!(*rt.lookup("GET", "/v1/products/p1").unwrap().1, "get");
        assert_eq!(*rt.lookup("GET", "/v1/a/b/c").unwrap().1, "catchall");
        assert_eq!(*rt.lookup("get", "/v1/products").unwrap().1, "list");
    }

    #[test]
    fn method_not_allowed_lists_methods() {
        let rt = table();
        assert_eq!(
            rt.lookup("PUT", "/v1/products/p1").unwrap_err(),
            LookupError::MethodNotAllowed { allowed: vec!["DELETE".into(), "GET".into(), "PATCH".into()] }
        );
        // A verb-less template takes `o1:cancel` as the id; more specific
        // than the catch-all.
        assert_eq!(rt.lookup("GET", "/v1/orders/o1:cancel").map(|r| *r.1), Ok("order"));
        assert_eq!(
            rt.lookup("PUT", "/v1/orders/o1:cancel").unwrap_err(),
            LookupError::MethodNotAllowed { allowed: vec!["GET".into(), "POST".into()] }
        );
        assert_eq!(rt.lookup("GET", "/v2/x").unwrap_err(), LookupError::NotFound);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb+c", false), "a/b+c");
        assert_eq!(percent_decode("a%2fb+c", true), "a/b c");
        assert_eq!(percent_decode("100%", false), "100%");
        assert_eq!(percent_decode("%zz%4", false), "%zz%4");
        assert_eq!(percent_decode("%C3%A9", false), "é");
    }
}
