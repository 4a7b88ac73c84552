"""Chemical structures (OCR 2.0, paper section 3.4): RDKit depictions labelled with SMILES.

Label (prompt "Parse the figure."): the RDKit canonical SMILES of the molecule drawn. The
drawing is made from the molecule parsed back from that label, so image and label cannot
disagree (tests redraw the label and compare pixels). Depiction styles vary: rotation, bond
width, font size, atom palette (colour, black and white, Avalon, CDK), double-bond spacing, explicit
methyls, stereo annotations, canvas size and background.

Molecules come from a user's SMILES file (``--input mols.smi``: one SMILES per line,
optionally followed by whitespace and a name; ``#`` comments and blank lines are ignored;
an invalid SMILES line is recorded as ``invalid_smiles`` and skipped), or from the embedded
default: BRICS fragments of a small set of well-known drug molecules, recombined at random
with RDKit's BRICS rules, which gives valid, diverse molecules without a download.
"""

from __future__ import annotations

import random
from functools import lru_cache

from data_engine.sources.base import GeneratedSample, Skip, hash16, require
from data_engine.sources.inputs import LinesSource
from models.prompts import PROMPT_FIGURE

# Seeds of the embedded default (public, textbook molecules); only their fragments are used.
SEED_SMILES = (
    "CC(=O)Oc1ccccc1C(=O)O", "CC(C)Cc1ccc(cc1)C(C)C(=O)O", "CC(=O)Nc1ccc(O)cc1",
    "Cn1cnc2c1c(=O)n(C)c(=O)n2C", "CN1CCC[C@H]1c1cccnc1", "COc1ccc2nc(S(=O)Cc3ncc(C)c(OC)c3C)[nH]c2c1",
    "CC(C)NCC(O)COc1cccc2ccccc12", "CN(C)CCCN1c2ccccc2CCc2ccccc21", "OC(=O)CCc1ccccc1",
    "Clc1ccc(cc1)C(c1ccccc1)N1CCNCC1", "CC1=C(C(=O)OCC)C(c2cccc(c2)[N+](=O)[O-])C(=C(N1)C)C(=O)OC",
    "NS(=O)(=O)c1cc2c(cc1Cl)NCNS2(=O)=O", "O=C(O)c1ccccc1O", "CCN(CC)C(=O)c1cccc(C)c1",
    "c1ccc2c(c1)[nH]c1ccccc12", "O=C1NC(=O)C(N1)(c1ccccc1)c1ccccc1", "CC(C)(C)NCC(O)c1ccc(O)c(CO)c1",
    "COc1cc(C=O)ccc1O", "C1CCN(CC1)c1ncncc1", "Fc1ccc(cc1)C(=O)CCCN1CCC(O)(CC1)c1ccc(Cl)cc1",
    "CC(=O)N[C@@H](Cc1ccccc1)C(=O)O", "OC[C@H]1O[C@@H](O)[C@H](O)[C@@H](O)[C@@H]1O",
    "Cc1ccc(cc1)S(=O)(=O)NC(=O)NC1CCCCC1", "c1ccc(cc1)N1CCOCC1", "CCOC(=O)c1ccc(N)cc1",
    "O=C(Nc1ccccc1)c1ccccn1", "CS(=O)(=O)c1ccc(cc1)C1=C(C(=O)OC1)c1ccccc1", "Oc1ccc(cc1)C1CCNCC1",
    "CC(C)Oc1ccc(cc1)C(=O)N1CCN(C)CC1", "COC(=O)c1cc(OC)c(OC)c(OC)c1", "Brc1cccs1", "O=C1CCC(=O)N1",
)
PALETTES = ("default", "bw", "avalon", "cdk")


@lru_cache(maxsize=1)
def _fragments() -> tuple:
    from rdkit import Chem
    from rdkit.Chem import BRICS

    frags = set()
    for smi in SEED_SMILES:
        mol = Chem.MolFromSmiles(smi)
        frags.update(BRICS.BRICSDecompose(mol, minFragmentSize=2))
    return tuple(sorted(frags))


def random_molecule(rng: random.Random, max_tries: int = 20):
    """A valid molecule built from 2-4 BRICS fragments (deterministic for ``rng``)."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import BRICS

    RDLogger.DisableLog("rdApp.*")
    frags = _fragments()
    dummy, hydrogen = Chem.MolFromSmarts("[#0]"), Chem.MolFromSmiles("[H]")
    for _ in range(max_tries):
        picks = [Chem.MolFromSmiles(s) for s in rng.sample(frags, rng.randint(2, 4))]
        products = []
        for i, prod in enumerate(BRICS.BRICSBuild(picks, scrambleReagents=False, maxDepth=rng.randint(1, 2))):
            products.append(prod)
            if i >= 7:
                break
        if not products:
            continue
        mol = rng.choice(products)
        mol = Chem.ReplaceSubstructs(mol, dummy, hydrogen, replaceAll=True)[0]
        try:
            mol = Chem.RemoveHs(mol)
            Chem.SanitizeMol(mol)
        except Exception:  # noqa: BLE001 - RDKit raises several types for an unusable product
            continue
        if 6 <= mol.GetNumHeavyAtoms() <= 48:
            return mol
    mol = Chem.MolFromSmiles(rng.choice(SEED_SMILES))
    return mol


def canonical(mol) -> str:
    from rdkit import Chem

    return Chem.MolToSmiles(mol)


def random_style(rng: random.Random) -> dict:
    return {"size": rng.choice((256, 300, 320, 384, 448)), "rotate": rng.choice((0, 0, 30, 90, 180, 270, rng.randrange(360))),
            "bond_width": rng.choice((1.0, 1.5, 2.0, 2.5, 3.0)), "font_scale": rng.choice((0.8, 1.0, 1.2, 1.4)),
            "palette": rng.choice(PALETTES), "bond_offset": rng.choice((0.12, 0.15, 0.2)), "methyls": rng.random() < 0.15,
            "stereo": rng.random() < 0.2, "bg": rng.choice(((1, 1, 1), (1, 1, 1), (0.97, 0.97, 0.94), (0.95, 0.97, 1.0)))}


def draw_smiles(smiles: str, style: dict) -> bytes:
    """PNG bytes of the molecule of ``smiles`` depicted with ``style`` (RDKit Cairo drawer)."""
    from rdkit import Chem
    from rdkit.Chem import rdDepictor
    from rdkit.Chem.Draw import rdMolDraw2D

    mol = Chem.MolFromSmiles(smiles)
    rdDepictor.SetPreferCoordGen(False)
    rdDepictor.Compute2DCoords(mol)
    d = rdMolDraw2D.MolDraw2DCairo(style["size"], style["size"])
    o = d.drawOptions()
    o.rotate = float(style["rotate"])
    o.bondLineWidth = float(style["bond_width"])
    o.baseFontSize = 0.6 * style["font_scale"]
    o.explicitMethyl = bool(style["methyls"])
    o.addStereoAnnotation = bool(style["stereo"])
    o.multipleBondOffset = float(style["bond_offset"])  # (comic mode is not deterministic: not used)
    o.setBackgroundColour(tuple(style["bg"]))
    {"default": o.useDefaultAtomPalette, "bw": o.useBWAtomPalette, "avalon": o.useAvalonAtomPalette,
     "cdk": o.useCDKAtomPalette}[style["palette"]]()
    rdMolDraw2D.PrepareAndDrawMolecule(d, mol)
    d.FinishDrawing()
    return d.GetDrawingText()


class ChemistrySource(LinesSource):
    name = "chemistry"

    def __init__(self, input: str | None = None, **options):
        require("rdkit", "rdkit", "sources")
        super().__init__(input=input, **options)

    def make(self, index, rng):
        import io

        from PIL import Image
        from rdkit import Chem, RDLogger

        if self.lines is None:
            mol = random_molecule(rng)
        else:
            line = self.lines[index].strip()
            if not line or line.startswith("#"):
                raise Skip("empty_line", "blank or comment line")
            smi = line.split()[0]
            RDLogger.DisableLog("rdApp.*")
            mol = Chem.MolFromSmiles(smi)
            if mol is None or mol.GetNumAtoms() == 0:
                raise Skip("invalid_smiles", f"RDKit cannot parse {smi[:120]!r}")
        label = canonical(mol)
        style = random_style(rng)
        png = draw_smiles(label, style)
        image = Image.open(io.BytesIO(png)).convert("RGB")
        return GeneratedSample(image=image, labels={"figure": {"prompt": PROMPT_FIGURE, "text": label}},
                               source_path=self.options["input"] or f"generated:{self.name}",
                               doc_id=hash16("smiles", label, sorted(style.items())), extra={"style": style})
