//! Role cardinality: "N" means exactly N members, "N+" at least N.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cardinality {
    pub min: u32,
    /// `true` for "N+": the role may grow beyond `min`.
    pub scalable: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cardinality {0:?} is not \"N\" or \"N+\" with N a whole number")]
pub struct CardinalityError(pub String);

impl Cardinality {
    pub fn parse(text: &str) -> Result<Self, CardinalityError> {
        let (digits, scalable) = match text.strip_suffix('+') {
            Some(d) => (d, true),
            None => (text, false),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CardinalityError(text.to_string()));
        }
        let min = digits.parse().map_err(|_| CardinalityError(text.to_string()))?;
        Ok(Cardinality { min, scalable })
    }

    pub fn allows(self, members: i64) -> bool {
        members >= i64::from(self.min) && (self.scalable || members == i64::from(self.min))
    }

    /// Members when the cluster does not say: the N of "N" or "N+".
    pub fn default_members(self) -> u32 {
        self.min
    }
}

impl fmt::Display for Cardinality {
    /// Human wording for error messages: "exactly 3" / "at least 2".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.scalable {
            write!(f, "at least {}", self.min)
        } else {
            write!(f, "exactly {}", self.min)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_and_scalable() {
        assert_eq!(
            Cardinality::parse("3"),
            Ok(Cardinality {
                min: 3,
                scalable: false
            })
        );
        assert_eq!(Cardinality::parse("0+"), Ok(Cardinality { min: 0, scalable: true }));
        for bad in ["", "+", "two", "1++", "-1", "1.5", " 1"] {
            assert!(Cardinality::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn allows_members_within_bounds() {
        let exact = Cardinality::parse("2").expect("valid");
        assert!(exact.allows(2) && !exact.allows(1) && !exact.allows(3));
        let scalable = Cardinality::parse("2+").expect("valid");
        assert!(scalable.allows(2) && scalable.allows(500) && !scalable.allows(1));
        assert_eq!(scalable.to_string(), "at least 2");
        assert_eq!(exact.to_string(), "exactly 2");
    }
}
