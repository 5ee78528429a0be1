use crate::{AgentError, Context, Parameter};

impl Context {
    /// The value of parameter `name`, if set (defaults from metadata are already applied).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The value of parameter `name`, or an `invalid-config` error naming it.
    pub fn require(&self, name: &str) -> Result<&str, AgentError> {
        self.param(name).filter(|v| !v.is_empty()).ok_or_else(|| AgentError::InvalidConfig(format!("parameter `{name}` is required")))
    }

    /// Parameter `name` as a boolean (`true/yes/on/1`, `false/no/off/0`), `default` when unset.
    pub fn param_bool(&self, name: &str, default: bool) -> Result<bool, AgentError> {
        match self.param(name).map(str::trim) {
            None | Some("") => Ok(default),
            Some("true" | "yes" | "1" | "on") => Ok(true),
            Some("false" | "no" | "0" | "off") => Ok(false),
            Some(v) => Err(AgentError::InvalidConfig(format!("parameter `{name}` must be true or false, got `{v}`"))),
        }
    }

    /// Parameter `name` parsed as a number, with `default` when unset.
    pub fn param_u64(&self, name: &str, default: u64) -> Result<u64, AgentError> {
        match self.param(name) {
            None | Some("") => Ok(default),
            Some(v) => {
                v.trim().parse().map_err(|_| AgentError::InvalidConfig(format!("parameter `{name}` must be a whole number, got `{v}`")))
            }
        }
    }
}

/// Builder for a parameter description in metadata.
pub struct Param(Parameter);

impl Param {
    /// A required parameter.
    pub fn required(name: &str, description: &str) -> Self {
        Self(Parameter { name: name.into(), description: description.into(), required: true, default: None })
    }

    /// An optional parameter with a default value.
    pub fn optional(name: &str, default: &str, description: &str) -> Self {
        Self(Parameter { name: name.into(), description: description.into(), required: false, default: Some(default.into()) })
    }

    /// An optional parameter with no default.
    pub fn optional_unset(name: &str, description: &str) -> Self {
        Self(Parameter { name: name.into(), description: description.into(), required: false, default: None })
    }
}

impl From<Param> for Parameter {
    fn from(p: Param) -> Parameter {
        p.0
    }
}
