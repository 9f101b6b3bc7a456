//! The rule that keeps the services' metric definitions in agreement: the promoted batch view
//! is the reference, and a service whose definitions (see [`crate::fingerprint`]) differ from
//! the view's is refused, naming each difference. The registry in Postgres that records both
//! is `shared_io::registry`.

use crate::fingerprint::{CanonicalCatalog, Difference};
use std::fmt;

/// A service's metric definitions disagree with the promoted view's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DefinitionsDiffer {
    pub service: String,
    pub fingerprint: String,
    pub view_version: String,
    pub view_fingerprint: String,
    /// Empty only when the stored definitions could not be read back.
    pub differences: Vec<Difference>,
}

impl fmt::Display for DefinitionsDiffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "the metric definitions of {} (fingerprint {}) differ from those of the promoted batch view {} (fingerprint {}):",
            self.service, self.fingerprint, self.view_version, self.view_fingerprint
        )?;
        if self.differences.is_empty() {
            writeln!(
                f,
                "  (the promoted view's definitions are stored in a form this binary cannot read)"
            )?;
        }
        for difference in &self.differences {
            writeln!(f, "  {difference}")?;
        }
        write!(
            f,
            "To roll these definitions out, run `batch-layer run --accept-definitions` with them first; \
             to keep the promoted ones, start this service with the promoted view's definitions \
             (docs/DESIGN.md, \"Changing metric definitions\")"
        )
    }
}

/// The definitions the promoted view was computed with.
#[derive(Debug, Clone)]
pub struct PromotedDefinitions {
    pub version: String,
    /// `None` for a view promoted before the registry existed.
    pub fingerprint: Option<String>,
    /// `None` when unknown, or stored in a form this binary cannot read.
    pub canonical: Option<CanonicalCatalog>,
}

/// Compares `canonical` with the promoted view's definitions; no view, or one without a
/// recorded fingerprint, agrees with everything.
pub fn check(
    service: &str,
    canonical: &CanonicalCatalog,
    promoted: Option<&PromotedDefinitions>,
) -> Result<(), DefinitionsDiffer> {
    let Some(promoted) = promoted else {
        return Ok(());
    };
    let Some(view_fingerprint) = &promoted.fingerprint else {
        return Ok(());
    };
    let fingerprint = canonical.fingerprint();
    if *view_fingerprint == fingerprint {
        return Ok(());
    }
    Err(DefinitionsDiffer {
        service: service.to_string(),
        fingerprint,
        view_version: promoted.version.clone(),
        view_fingerprint: view_fingerprint.clone(),
        differences: promoted
            .canonical
            .as_ref()
            .map(|old| old.diff(canonical))
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::MetricCatalog;

    fn promoted(catalog: &MetricCatalog) -> PromotedDefinitions {
        PromotedDefinitions {
            version: "v1".into(),
            fingerprint: Some(catalog.fingerprint()),
            canonical: Some(catalog.canonical()),
        }
    }

    #[test]
    fn no_view_or_a_view_before_the_registry_agrees_with_everything() {
        let catalog = MetricCatalog::default();
        assert!(check("speed-layer run", &catalog.canonical(), None).is_ok());
        let old = PromotedDefinitions {
            version: "v0".into(),
            fingerprint: None,
            canonical: None,
        };
        assert!(check("speed-layer run", &catalog.canonical(), Some(&old)).is_ok());
        assert!(
            check(
                "speed-layer run",
                &catalog.canonical(),
                Some(&promoted(&catalog))
            )
            .is_ok()
        );
    }

    #[test]
    fn a_disagreement_names_service_view_metric_field_and_values() {
        let view = MetricCatalog::default();
        let here = MetricCatalog::from_toml(&crate::catalog::DEFAULT_METRICS.replace(
            "dimensions = [\"country\"]\n\n[[metric]]\nname = \"page_views\"",
            "dimensions = [\"city\"]\n\n[[metric]]\nname = \"page_views\"",
        ))
        .unwrap();
        let err = check("speed-layer run", &here.canonical(), Some(&promoted(&view))).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("speed-layer run"), "{text}");
        assert!(text.contains("promoted batch view v1"), "{text}");
        assert!(
            text.contains(
                r#"metric `revenue`, field `dimensions`: ["country"] in the promoted view, ["city"] here"#
            ),
            "{text}"
        );
        assert!(text.contains("--accept-definitions"), "{text}");
        assert_eq!(err.differences.len(), 1);
    }
}
