//! The method names: one enum, from which every name is derived.

use std::fmt;

/// A training method of the paper: the `method` of a `[strategy]` table, the
/// name in run names, summaries and reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Plain cross-entropy training (`baseline`).
    Baseline,
    /// Label smoothing (`lsr`).
    Lsr,
    /// Normal KD (`kd`).
    Kd,
    /// Reversed KD (`re-kd`).
    ReKd,
    /// Defective KD (`de-kd`).
    DeKd,
    /// Tf-KD_self (`tf-kd-self`).
    TfKdSelf,
    /// Tf-KD_reg (`tf-kd-reg`).
    TfKdReg,
}

impl Method {
    /// Every method, in the paper's order.
    pub const ALL: [Method; 7] = [
        Method::Baseline,
        Method::Lsr,
        Method::Kd,
        Method::ReKd,
        Method::DeKd,
        Method::TfKdSelf,
        Method::TfKdReg,
    ];

    /// The name as written in configs (serde's spelling).
    pub const fn as_str(self) -> &'static str {
        match self {
            Method::Baseline => "baseline",
            Method::Lsr => "lsr",
            Method::Kd => "kd",
            Method::ReKd => "re-kd",
            Method::DeKd => "de-kd",
            Method::TfKdSelf => "tf-kd-self",
            Method::TfKdReg => "tf-kd-reg",
        }
    }

    /// The method of a config name, if it is one.
    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.as_str() == name)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Method::from_name(s.trim()).ok_or_else(|| {
            let names: Vec<&str> = Method::ALL.iter().map(|m| m.as_str()).collect();
            format!("unknown method `{s}`; known: {}", names.join(", "))
        })
    }
}

impl From<Method> for String {
    fn from(m: Method) -> String {
        m.as_str().to_string()
    }
}

impl PartialEq<str> for Method {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Method {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_serde_names() {
        for m in Method::ALL {
            let json = serde_json_like(m);
            assert_eq!(json, m.as_str());
            assert_eq!(m.to_string(), m.as_str());
            assert_eq!(m.as_str().parse::<Method>(), Ok(m));
        }
        assert!("distill".parse::<Method>().unwrap_err().contains("tf-kd-reg"));
    }

    /// The serde name of `m` (through a TOML table, the configs' format).
    fn serde_json_like(m: Method) -> String {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct T {
            method: Method,
        }
        let text = toml::to_string(&T { method: m }).unwrap();
        let back: T = toml::from_str(&text).unwrap();
        assert_eq!(back.method, m);
        text.trim().trim_start_matches("method = ").trim_matches('"').to_string()
    }
}
