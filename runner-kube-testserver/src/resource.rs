//! The resources the server knows and the names the wire protocol uses for them.

/// One resource type the server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    /// Core v1 pods.
    Pod,
    /// coordination.k8s.io/v1 leases.
    Lease,
    /// Core v1 persistent volume claims.
    PersistentVolumeClaim,
}

impl Kind {
    /// The resource's name in URLs and RBAC rules (`pods`).
    pub(crate) fn plural(self) -> &'static str {
        match self {
            Self::Pod => "pods",
            Self::Lease => "leases",
            Self::PersistentVolumeClaim => "persistentvolumeclaims",
        }
    }

    /// The API group (`""` for core).
    pub(crate) fn group(self) -> &'static str {
        match self {
            Self::Pod | Self::PersistentVolumeClaim => "",
            Self::Lease => "coordination.k8s.io",
        }
    }

    /// The object's `kind`.
    pub(crate) fn kind(self) -> &'static str {
        match self {
            Self::Pod => "Pod",
            Self::Lease => "Lease",
            Self::PersistentVolumeClaim => "PersistentVolumeClaim",
        }
    }

    /// The object's `apiVersion`.
    pub(crate) fn api_version(self) -> &'static str {
        match self {
            Self::Pod | Self::PersistentVolumeClaim => "v1",
            Self::Lease => "coordination.k8s.io/v1",
        }
    }

    /// The resource as messages name it: `pods`, `leases.coordination.k8s.io`.
    pub(crate) fn qualified(self) -> String {
        match self.group() {
            "" => self.plural().to_string(),
            group => format!("{}.{group}", self.plural()),
        }
    }

    /// The resource of `plural` in `group`.
    pub(crate) fn from_path(group: &str, plural: &str) -> Option<Self> {
        [Self::Pod, Self::Lease, Self::PersistentVolumeClaim]
            .into_iter()
            .find(|kind| kind.group() == group && kind.plural() == plural)
    }
}
