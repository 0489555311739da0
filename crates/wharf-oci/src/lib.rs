//! Pure OCI types with no I/O: digests, repository names, tags, references, media types,
//! manifest parsing and validation, and the distribution-spec error codes.

pub mod digest;
pub mod error;
pub mod manifest;
pub mod media;
pub mod name;
pub mod reference;
pub mod registry;
pub mod resumable;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use error::ErrorCode;
pub use manifest::{Descriptor, Manifest, ManifestError};
pub use name::{NameError, Reference, RepositoryName, Tag};
pub use reference::{ImageReference, ReferenceError};
pub use registry::{RegistryName, RegistryNameError};
pub use resumable::ResumableSha256;
