"""dbt on the warehouse: the project in `taxi_platform/transform/`, and the `dbt` resource that runs it
against the warehouse the profile chose (the DuckDB file, or the BigQuery dataset).

The manifest (`transform/target/manifest.json`) is prepared, never committed: `dagster dev` prepares it
(`prepare_if_dev`), and so do `.ci/run`, the Dockerfile and the README's first command
(`dagster-dbt project prepare-and-package --file taxi_platform/dbt_runner.py`). The connection comes
from the `warehouse` resource itself (`WarehouseSQL.dbt_output`), written as a dbt profile into a
private folder for each run: no setting is read twice and no credential lands in a file.
"""

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import yaml
from dagster_dbt import DagsterDbtTranslator, DbtCliInvocation, DbtCliResource, DbtProject
from pydantic import Field, PrivateAttr

from taxi_platform.io_managers.warehouse import WarehouseSQL

TRANSFORM = DbtProject(project_dir=Path(__file__).parent / "transform")
PROFILE = "taxi_transform"  # dbt_project.yml's profile


class DbtWarehouseCli(dg.ConfigurableResource):
    """Runs dbt commands of the project on `warehouse`, as dbt target `target` (local, gcp)."""

    target: str = Field(description="The dbt target's name: the platform profile (local, gcp).")
    warehouse: WarehouseSQL
    threads: int = Field(default=2, description="dbt's threads (models built at the same time).")
    _profiles_dir: str = PrivateAttr(default="")

    def profile(self) -> dict:
        """The dbt profiles.yml content for this target."""
        output = {**self.warehouse.dbt_output(), "threads": self.threads}
        return {PROFILE: {"target": self.target, "outputs": {self.target: output}}}

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._profiles_dir = tempfile.mkdtemp(prefix="taxi_dbt_profile_")
        Path(self._profiles_dir, "profiles.yml").write_text(yaml.safe_dump(self.profile()))

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        shutil.rmtree(self._profiles_dir, ignore_errors=True)

    def cli(
        self,
        args: list[str],
        *,
        context: dg.AssetExecutionContext | dg.OpExecutionContext,
        manifest: Mapping[str, Any] | None = None,
        translator: DagsterDbtTranslator | None = None,
    ) -> DbtCliInvocation:
        """`dbt <args>` for the assets and checks the context selects; from an op, whatever `args`
        select, mapped to assets by `manifest` and `translator`. Errors are the caller's."""
        dbt = DbtCliResource(project_dir=TRANSFORM, profiles_dir=self._profiles_dir, target=self.target)
        return dbt.cli(
            args, context=context, manifest=manifest, dagster_dbt_translator=translator, raise_on_error=False
        )
