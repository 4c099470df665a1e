//! Human-readable lines, plus one JSON object of the figures with `--json`
//! (the lines then go to stderr so stdout stays parseable).

use serde_json::{Map, Value};

pub struct Report {
    json: Option<Map<String, Value>>,
}

impl Report {
    pub fn new(json: bool) -> Self {
        Self { json: json.then(Map::new) }
    }

    pub fn say(&self, line: impl AsRef<str>) {
        if self.json.is_some() {
            eprintln!("{}", line.as_ref());
        } else {
            println!("{}", line.as_ref());
        }
    }

    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        if let Some(map) = &mut self.json {
            map.insert(key.to_owned(), value.into());
        }
    }

    pub fn finish(self) {
        if let Some(map) = self.json {
            println!("{}", Value::Object(map));
        }
    }
}

/// "0.71 (target ≥ 0.60)" style verdicts share one shape.
pub fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}
