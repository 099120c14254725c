//! What a command prints: a line (or lines) for people, and the same facts as one JSON
//! document for `--json` (every command that prints takes it).

use serde_json::Value;

/// A command's result in both forms.
#[derive(Debug, Clone)]
pub struct Printed {
    /// For people; ends in a newline.
    pub text: String,
    pub json: Value,
}

impl Printed {
    /// `text` (a newline added when it lacks one) and `json`.
    pub fn new(text: impl Into<String>, json: Value) -> Self {
        let mut text = text.into();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        Self { text, json }
    }

    /// The form asked for: pretty JSON ending in a newline, or the text.
    pub fn render(&self, as_json: bool) -> String {
        if as_json {
            // A `Value` always serializes.
            serde_json::to_string_pretty(&self.json).unwrap_or_default() + "\n"
        } else {
            self.text.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Printed;
    use serde_json::json;

    #[test]
    fn renders_text_or_json() {
        let p = Printed::new("revoked token ab12", json!({"revoked": "ab12"}));
        assert_eq!(p.render(false), "revoked token ab12\n");
        let v: serde_json::Value = serde_json::from_str(&p.render(true)).unwrap();
        assert_eq!(v, json!({"revoked": "ab12"}));
        assert!(p.render(true).ends_with("}\n"));
    }
}
