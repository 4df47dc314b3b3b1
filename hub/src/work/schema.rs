//! The input schemas tools describe: checked when a tool is pushed, shown to MCP clients, and
//! used to check a call's arguments before a task is made of them.
//!
//! A schema is JSON Schema (draft 2020-12 keywords). [`check`] refuses what no validator could
//! use — not JSON, not an object, a keyword of the wrong shape (`"type": "strin"`, `"required":
//! "x"`), nesting deeper than [`MAX_DEPTH`] or text above [`MAX_SCHEMA_BYTES`] — naming the
//! place (`/properties/n/type`). [`validate`] checks a value against the keywords that decide
//! whether a call makes sense (types, required and extra properties, enums, bounds, lengths,
//! items); keywords it does not apply are the tool's own business.

use serde_json::{Map, Value};

/// Largest schema text accepted.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// Deepest nesting of schemas accepted.
pub const MAX_DEPTH: usize = 32;

/// The seven JSON Schema types.
const TYPES: [&str; 7] = [
    "string", "number", "integer", "boolean", "object", "array", "null",
];

/// Keywords whose value is one schema.
const ONE_SCHEMA: [&str; 12] = [
    "items",
    "additionalProperties",
    "not",
    "contains",
    "propertyNames",
    "if",
    "then",
    "else",
    "additionalItems",
    "unevaluatedProperties",
    "unevaluatedItems",
    "contentSchema",
];
/// Keywords whose value maps names to schemas.
const SCHEMA_MAPS: [&str; 5] = [
    "properties",
    "patternProperties",
    "$defs",
    "definitions",
    "dependentSchemas",
];
/// Keywords whose value is a non-empty list of schemas.
const SCHEMA_LISTS: [&str; 4] = ["prefixItems", "allOf", "anyOf", "oneOf"];
/// Keywords whose value is a number.
const NUMBERS: [&str; 5] = [
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
];
/// Keywords whose value is a count.
const COUNTS: [&str; 8] = [
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "minContains",
    "maxContains",
];
/// Keywords whose value is text.
const TEXTS: [&str; 8] = [
    "$schema",
    "$id",
    "$ref",
    "$anchor",
    "title",
    "description",
    "format",
    "pattern",
];

/// Parses and checks a tool's input schema; the schema, or why it is refused. An empty text is
/// a schema for any text input (`{"type":"string"}`).
pub fn check(text: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(serde_json::json!({"type": "string"}));
    }
    if text.len() > MAX_SCHEMA_BYTES {
        return Err(format!(
            "{} bytes is more than the {MAX_SCHEMA_BYTES} allowed",
            text.len()
        ));
    }
    let schema: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    check_schema(&schema, "", 0)?;
    Ok(schema)
}

fn check_schema(schema: &Value, at: &str, depth: usize) -> Result<(), String> {
    let place = if at.is_empty() { "/" } else { at };
    if depth > MAX_DEPTH {
        return Err(format!("{place}: nested deeper than {MAX_DEPTH} schemas"));
    }
    let keywords = match schema {
        Value::Bool(_) => return Ok(()),
        Value::Object(keywords) => keywords,
        other => {
            return Err(format!(
                "{place}: a schema is an object or a boolean, not {}",
                kind_of(other)
            ));
        }
    };
    for (keyword, value) in keywords {
        let here = format!("{at}/{}", escape(keyword));
        let wrong = |what: &str| Err(format!("{here}: must be {what}, not {}", kind_of(value)));
        let keyword = keyword.as_str();
        if keyword == "type" {
            check_type(value, &here)?;
        } else if ONE_SCHEMA.contains(&keyword) {
            check_schema(value, &here, depth + 1)?;
        } else if SCHEMA_MAPS.contains(&keyword) {
            let Value::Object(members) = value else {
                return wrong("an object of schemas");
            };
            for (name, member) in members {
                check_schema(member, &format!("{here}/{}", escape(name)), depth + 1)?;
            }
        } else if SCHEMA_LISTS.contains(&keyword) {
            match value {
                Value::Array(list) if !list.is_empty() => {
                    for (i, member) in list.iter().enumerate() {
                        check_schema(member, &format!("{here}/{i}"), depth + 1)?;
                    }
                }
                _ => return wrong("a non-empty array of schemas"),
            }
        } else if keyword == "required" {
            let Value::Array(names) = value else {
                return wrong("an array of property names");
            };
            let mut seen = std::collections::BTreeSet::new();
            for name in names {
                let Value::String(name) = name else {
                    return Err(format!("{here}: {} is not a property name", kind_of(name)));
                };
                if !seen.insert(name) {
                    return Err(format!("{here}: {name:?} is listed twice"));
                }
            }
        } else if keyword == "enum" {
            if !value.is_array() {
                return wrong("an array of values");
            }
        } else if NUMBERS.contains(&keyword) {
            let Some(number) = value.as_f64() else {
                return wrong("a number");
            };
            if keyword == "multipleOf" && number <= 0.0 {
                return Err(format!("{here}: must be above 0"));
            }
        } else if COUNTS.contains(&keyword) {
            if value.as_u64().is_none() {
                return wrong("a count (an integer from 0)");
            }
        } else if TEXTS.contains(&keyword) && !value.is_string() {
            return wrong("text");
        }
    }
    Ok(())
}

fn check_type(value: &Value, at: &str) -> Result<(), String> {
    let one = |name: &Value| match name {
        Value::String(name) if TYPES.contains(&name.as_str()) => Ok(()),
        other => Err(format!(
            "{at}: {other} is not a JSON Schema type ({})",
            TYPES.join(", ")
        )),
    };
    match value {
        Value::Array(names) if !names.is_empty() => names.iter().try_for_each(one),
        Value::Array(_) => Err(format!("{at}: an empty list of types allows nothing")),
        name => one(name),
    }
}

/// `~` and `/` escaped as in a JSON pointer.
fn escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Whether `schema` describes an object (what an MCP tool's arguments are).
pub fn is_object_schema(schema: &Value) -> bool {
    match schema.get("type") {
        Some(Value::String(t)) => t == "object",
        Some(Value::Array(types)) => types.len() == 1 && types[0] == "object",
        _ => false,
    }
}

/// Checks `value` against `schema`: types, `required`, `additionalProperties: false`,
/// `properties`, `items`, `enum`, `const`, numeric bounds and lengths. The first mismatch, with
/// where it is (`/count: 3 is above the maximum 2`).
pub fn validate(schema: &Value, value: &Value) -> Result<(), String> {
    validate_at(schema, value, "", 0)
}

fn validate_at(schema: &Value, value: &Value, at: &str, depth: usize) -> Result<(), String> {
    let place = if at.is_empty() { "the input" } else { at };
    let keywords = match schema {
        Value::Bool(true) => return Ok(()),
        Value::Bool(false) => return Err(format!("{place}: no value is allowed here")),
        Value::Object(keywords) if depth <= MAX_DEPTH => keywords,
        _ => return Ok(()),
    };
    if let Some(types) = keywords.get("type") {
        let names: Vec<&str> = match types {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !names.is_empty() && !names.iter().any(|name| has_type(value, name)) {
            return Err(format!(
                "{place}: expected {}, got {}",
                names.join(" or "),
                kind_of(value)
            ));
        }
    }
    if let Some(Value::Array(allowed)) = keywords.get("enum")
        && !allowed.contains(value)
    {
        return Err(format!(
            "{place}: {value} is not one of {}",
            Value::Array(allowed.clone())
        ));
    }
    if let Some(expected) = keywords.get("const")
        && expected != value
    {
        return Err(format!("{place}: must be {expected}"));
    }
    match value {
        Value::Object(members) => validate_object(keywords, members, at, depth)?,
        Value::Array(items) => {
            check_count(
                keywords,
                "minItems",
                "maxItems",
                items.len(),
                place,
                "items",
            )?;
            if let Some(item_schema) = keywords.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate_at(item_schema, item, &format!("{at}/{i}"), depth + 1)?;
                }
            }
        }
        Value::String(text) => {
            let chars = text.chars().count();
            check_count(
                keywords,
                "minLength",
                "maxLength",
                chars,
                place,
                "characters",
            )?;
        }
        Value::Number(number) => {
            if let Some(n) = number.as_f64() {
                check_bounds(keywords, n, place)?;
            }
        }
        Value::Null | Value::Bool(_) => {}
    }
    Ok(())
}

fn validate_object(
    keywords: &Map<String, Value>,
    members: &Map<String, Value>,
    at: &str,
    depth: usize,
) -> Result<(), String> {
    let place = if at.is_empty() { "the input" } else { at };
    if let Some(Value::Array(required)) = keywords.get("required") {
        for name in required.iter().filter_map(Value::as_str) {
            if !members.contains_key(name) {
                return Err(format!("{place}: {name:?} is required"));
            }
        }
    }
    let properties = keywords.get("properties").and_then(Value::as_object);
    for (name, member) in members {
        let here = format!("{at}/{}", escape(name));
        match properties.and_then(|p| p.get(name)) {
            Some(member_schema) => validate_at(member_schema, member, &here, depth + 1)?,
            None => match keywords.get("additionalProperties") {
                Some(Value::Bool(false)) => {
                    let known: Vec<&String> =
                        properties.map(|p| p.keys().collect()).unwrap_or_default();
                    return Err(format!(
                        "{place}: {name:?} is not a property here (known: {})",
                        known
                            .iter()
                            .map(|k| k.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                Some(extra) => validate_at(extra, member, &here, depth + 1)?,
                None => {}
            },
        }
    }
    Ok(())
}

fn has_type(value: &Value, name: &str) -> bool {
    match name {
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|n| n.fract() == 0.0)
        }
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "null" => value.is_null(),
        _ => true,
    }
}

fn check_count(
    keywords: &Map<String, Value>,
    min: &str,
    max: &str,
    count: usize,
    place: &str,
    unit: &str,
) -> Result<(), String> {
    let count = u64::try_from(count).unwrap_or(u64::MAX);
    if let Some(least) = keywords.get(min).and_then(Value::as_u64)
        && count < least
    {
        return Err(format!(
            "{place}: {count} {unit}, fewer than the {least} required"
        ));
    }
    if let Some(most) = keywords.get(max).and_then(Value::as_u64)
        && count > most
    {
        return Err(format!(
            "{place}: {count} {unit}, more than the {most} allowed"
        ));
    }
    Ok(())
}

fn check_bounds(keywords: &Map<String, Value>, n: f64, place: &str) -> Result<(), String> {
    let bound = |key: &str| keywords.get(key).and_then(Value::as_f64);
    if let Some(min) = bound("minimum")
        && n < min
    {
        return Err(format!("{place}: {n} is below the minimum {min}"));
    }
    if let Some(max) = bound("maximum")
        && n > max
    {
        return Err(format!("{place}: {n} is above the maximum {max}"));
    }
    if let Some(min) = bound("exclusiveMinimum")
        && n <= min
    {
        return Err(format!("{place}: {n} must be above {min}"));
    }
    if let Some(max) = bound("exclusiveMaximum")
        && n >= max
    {
        return Err(format!("{place}: {n} must be below {max}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schemas_of_the_wrong_shape_are_refused_with_the_place() {
        assert!(check(r#"{"type":"string"}"#).is_ok());
        assert_eq!(check("").unwrap(), json!({"type": "string"}));
        assert!(check(r#"{"type":["integer","null"],"minimum":0}"#).is_ok());
        assert!(check("true").is_ok());
        let cases = [
            ("{", "not JSON"),
            ("42", "/: a schema is an object or a boolean, not a number"),
            (
                r#"{"type":"strin"}"#,
                "/type: \"strin\" is not a JSON Schema type",
            ),
            (r#"{"type":[]}"#, "/type: an empty list of types"),
            (
                r#"{"type":"object","properties":{"n":{"type":"nope"}}}"#,
                "/properties/n/type:",
            ),
            (r#"{"required":"x"}"#, "/required: must be an array"),
            (r#"{"required":["x","x"]}"#, "\"x\" is listed twice"),
            (r#"{"anyOf":[]}"#, "/anyOf: must be a non-empty array"),
            (r#"{"minLength":-1}"#, "/minLength: must be a count"),
            (r#"{"multipleOf":0}"#, "/multipleOf: must be above 0"),
            (
                r#"{"properties":{"a/b":{"type":1}}}"#,
                "/properties/a~1b/type",
            ),
            (r#"{"description":5}"#, "/description: must be text"),
        ];
        for (text, needle) in cases {
            let err = check(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
        let deep = format!(
            "{}{}",
            r#"{"items":"#.repeat(40),
            "true".to_string() + &"}".repeat(40)
        );
        assert!(check(&deep).unwrap_err().contains("deeper than 32"));
        let huge = format!(r#"{{"description":"{}"}}"#, "x".repeat(MAX_SCHEMA_BYTES));
        assert!(check(&huge).unwrap_err().contains("allowed"));
    }

    #[test]
    fn values_are_checked_against_the_keywords_that_matter() {
        let schema = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 4},
                "count": {"type": "integer", "minimum": 1, "maximum": 3},
                "mode": {"enum": ["fast", "slow"]},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2}
            },
            "required": ["name"],
            "additionalProperties": false
        });
        assert!(validate(&schema, &json!({"name": "ab", "count": 2, "tags": ["x"]})).is_ok());
        let cases = [
            (json!("text"), "the input: expected object, got text"),
            (json!({}), "\"name\" is required"),
            (
                json!({"name": ""}),
                "/name: 0 characters, fewer than the 1 required",
            ),
            (
                json!({"name": "abcde"}),
                "/name: 5 characters, more than the 4 allowed",
            ),
            (
                json!({"name": "a", "count": 4}),
                "/count: 4 is above the maximum 3",
            ),
            (
                json!({"name": "a", "count": 1.5}),
                "/count: expected integer",
            ),
            (
                json!({"name": "a", "mode": "odd"}),
                "/mode: \"odd\" is not one of",
            ),
            (
                json!({"name": "a", "tags": [1]}),
                "/tags/0: expected string",
            ),
            (
                json!({"name": "a", "tags": ["a", "b", "c"]}),
                "more than the 2 allowed",
            ),
            (
                json!({"name": "a", "extra": 1}),
                "\"extra\" is not a property here (known:",
            ),
        ];
        for (value, needle) in cases {
            let err = validate(&schema, &value).unwrap_err();
            assert!(err.contains(needle), "{value}: {err}");
        }
        assert!(is_object_schema(&schema));
        assert!(!is_object_schema(&json!({"type": "string"})));
        assert!(validate(&json!(false), &json!(1)).is_err());
    }
}
