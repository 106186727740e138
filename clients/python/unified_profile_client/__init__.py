"""Python client of the unified-profile ProfileService.

::

    from unified_profile_client import ProfileClient, ChangeFilter

    with ProfileClient("127.0.0.1:50051", token=token) as client:
        profile = client.get("p_01HZX...", fields=["person", "loyalty.tier"])
        for change in client.watch("latest", ChangeFilter(field_paths=("loyalty.*",))):
            print(change.sequence, change.profile_id, [f.path for f in change.changes])

Results are the API's protobuf messages (``unified_profile.v1``), re-exported here. Every failed
call raises :class:`ProfileServiceError` with a :class:`StatusCode` (the tree is in
``_exceptions``). The package depends on ``grpcio`` and ``protobuf`` only; ``profilectl`` is its
command-line tool (:mod:`unified_profile_client.cli`).
"""

from unified_profile.v1.profile_pb2 import (
    ChangeCause,
    ChangeKind,
    FieldChange,
    Identifier,
    Profile,
    ProfileChange,
    Provenance,
)
from unified_profile.v1.profile_service_pb2 import (
    ExplainProfileResponse,
    GetPipelineStatusResponse,
    GetProfileResponse,
    MergeProfilesResponse,
)

from ._client import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, ProfileClient
from ._config import RetryConfig, TlsConfig
from ._exceptions import ProfileServiceError, StatusCode
from ._types import (
    CHANGES_PER_MESSAGE,
    ChangeFilter,
    ChangeKindName,
    IdentifierRef,
    ProfileRefLike,
    WatchStart,
)
from ._watch import ChangeStream

__version__ = "0.1.0"

__all__ = [
    "CHANGES_PER_MESSAGE",
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "ChangeCause",
    "ChangeFilter",
    "ChangeKind",
    "ChangeKindName",
    "ChangeStream",
    "ExplainProfileResponse",
    "FieldChange",
    "GetPipelineStatusResponse",
    "GetProfileResponse",
    "Identifier",
    "IdentifierRef",
    "MergeProfilesResponse",
    "Profile",
    "ProfileChange",
    "ProfileClient",
    "ProfileRefLike",
    "ProfileServiceError",
    "Provenance",
    "RetryConfig",
    "StatusCode",
    "TlsConfig",
    "WatchStart",
    "__version__",
]
