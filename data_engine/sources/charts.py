"""Charts (OCR 2.0, paper section 3.4): matplotlib figures labelled with their data as HTML.

Kinds: bar (vertical/horizontal), stacked bar, line, scatter, pie; varied matplotlib styles,
fonts, sizes, legends, value annotations, grids and label languages (en, de, fr, es, ru, zh,
ja; Noto fonts). Label (prompt "Parse the figure."): the plotted data as an HTML table,

    header row: ["", series 1, series 2, ...]      (bar, stacked, line, pie: one series)
    one row per category: [category, v1, v2, ...]
    scatter: header ["", "x", "y"], one row per point: [series, x, y]

Values are plotted exactly as written in the table (rounded to the chart's decimals first),
so the table is the figure's ground truth. A user's own tables (``--input tables.jsonl``, one
``{"type", "title", "columns", "rows"}`` per line) are rendered the same way; an empty or
non-numeric table is recorded as a failure and skipped.
pyecharts is not used: it needs a headless browser to rasterise, which is not assumed here.
"""

from __future__ import annotations

import json
import random

import numpy as np

from data_engine.sources.base import GeneratedSample, Skip, require
from data_engine.sources.htmltable import html_table
from data_engine.sources.inputs import LinesSource
from models.prompts import PROMPT_FIGURE

KINDS = ("bar", "hbar", "stacked_bar", "line", "scatter", "pie")
STYLES = ("default", "ggplot", "bmh", "seaborn-v0_8-whitegrid", "seaborn-v0_8-darkgrid",
          "fivethirtyeight", "grayscale", "Solarize_Light2", "classic", "seaborn-v0_8-pastel")
FONTS = {"Latn": ["DejaVu Sans", "Noto Sans", "Noto Serif", "DejaVu Serif"],
         "Cyrl": ["DejaVu Sans", "Noto Sans", "Noto Serif", "DejaVu Serif"],
         "Hani": ["Noto Sans CJK JP", "Noto Serif CJK JP"], "Jpan": ["Noto Sans CJK JP", "Noto Serif CJK JP"]}

# Label vocabularies per language: (script, categories by theme, series names, titles).
LANGS = {
    "eng": ("Latn", {"month": "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec",
                     "day": "Mon Tue Wed Thu Fri Sat Sun",
                     "item": "Apples Pears Grapes Plums Cherries Lemons Melons Figs"},
            "Sales Revenue Cost Profit Users Orders Visits Returns", "Quarterly results|Monthly sales|Survey|Traffic"),
    "deu": ("Latn", {"month": "Jan Feb Mär Apr Mai Jun Jul Aug Sep Okt Nov Dez",
                     "day": "Mo Di Mi Do Fr Sa So",
                     "item": "Äpfel Birnen Trauben Pflaumen Kirschen Zitronen Melonen Feigen"},
            "Umsatz Kosten Gewinn Nutzer Aufträge Besuche", "Quartalszahlen|Monatlicher Umsatz|Umfrage"),
    "fra": ("Latn", {"month": "janv févr mars avr mai juin juil août sept oct nov déc",
                     "day": "lun mar mer jeu ven sam dim",
                     "item": "Pommes Poires Raisins Prunes Cerises Citrons Melons Figues"},
            "Ventes Coûts Bénéfice Utilisateurs Commandes Visites", "Résultats trimestriels|Ventes mensuelles|Enquête"),
    "spa": ("Latn", {"month": "ene feb mar abr may jun jul ago sep oct nov dic",
                     "day": "lun mar mié jue vie sáb dom",
                     "item": "Manzanas Peras Uvas Ciruelas Cerezas Limones Melones Higos"},
            "Ventas Costes Beneficio Usuarios Pedidos Visitas", "Resultados trimestrales|Ventas mensuales|Encuesta"),
    "rus": ("Cyrl", {"month": "янв фев мар апр май июн июл авг сен окт ноя дек",
                     "day": "пн вт ср чт пт сб вс",
                     "item": "Яблоки Груши Виноград Сливы Вишня Лимоны Дыни Инжир"},
            "Продажи Затраты Прибыль Пользователи Заказы Визиты", "Квартальные итоги|Продажи по месяцам|Опрос"),
    "zho": ("Hani", {"month": "一月 二月 三月 四月 五月 六月 七月 八月 九月 十月 十一月 十二月",
                     "day": "周一 周二 周三 周四 周五 周六 周日",
                     "item": "苹果 梨 葡萄 李子 樱桃 柠檬 西瓜 无花果"},
            "销售额 成本 利润 用户 订单 访问量", "季度业绩|月度销售|调查结果"),
    "jpn": ("Jpan", {"month": "1月 2月 3月 4月 5月 6月 7月 8月 9月 10月 11月 12月",
                     "day": "月曜 火曜 水曜 木曜 金曜 土曜 日曜",
                     "item": "りんご 梨 ぶどう すもも さくらんぼ レモン メロン いちじく"},
            "売上 費用 利益 ユーザー 注文 訪問", "四半期業績|月次売上|調査"),
}


def _fmt(v: float, decimals: int) -> str:
    return f"{v:.{decimals}f}"


def random_spec(rng: random.Random) -> dict:
    """A chart specification: kind, language, texts, data (already rounded), style."""
    kind = rng.choice(KINDS)
    lang = rng.choice(list(LANGS))
    script, themes, series_words, titles = LANGS[lang]
    cats = themes[rng.choice(sorted(themes))].split()
    start = rng.randrange(len(cats))
    n_cat = rng.randint(3, min(8, len(cats))) if kind != "scatter" else 0
    categories = [cats[(start + i) % len(cats)] for i in range(n_cat)]
    series_pool = series_words.split()
    n_series = 1 if kind == "pie" else rng.randint(1, 2 if kind == "scatter" else 4)
    series = rng.sample(series_pool, n_series)
    decimals = rng.choice((0, 0, 1, 2))
    scale = rng.choice((10, 100, 1000) if decimals == 0 else (1, 10, 100, 1000))  # no 0/1-only integer charts
    if kind == "scatter":
        rows = []
        for s in series:
            for _ in range(rng.randint(4, 12)):
                x, y = rng.uniform(0, 10 * scale), rng.uniform(0, 10 * scale)
                rows.append([s, round(x, decimals), round(y, decimals)])
        columns = ["x", "y"]
    else:
        lo = 0.0 if kind in ("pie", "stacked_bar") else rng.choice((0.0, -0.5))
        rows = [[c] + [round(rng.uniform(lo * scale, scale) + (scale * 0.05 if kind == "pie" else 0), decimals)
                       for _ in series] for c in categories]
        columns = series
    return {"type": kind, "lang": lang, "script": script, "title": rng.choice(titles.split("|")) if rng.random() < 0.8 else "",
            "columns": columns, "rows": rows, "decimals": decimals,
            "style": {"sheet": rng.choice(STYLES), "font": rng.choice(FONTS[script]),
                      "size": [round(rng.uniform(4.0, 8.0), 2), round(rng.uniform(3.0, 6.0), 2)],
                      "dpi": rng.choice((72, 80, 96, 110)), "fontsize": rng.choice((8, 9, 10, 11, 12)),
                      "legend": rng.choice(("best", "upper right", "upper left", "lower center", "outside")),
                      "annotate": rng.random() < 0.35, "grid": rng.random() < 0.5, "marker": rng.choice("o s ^ D .".split()),
                      "seed": rng.randrange(2 ** 31)}}


def validate_spec(spec: dict) -> dict:
    """Check a (user) table spec; raises ``Skip`` with a reason when it cannot be charted."""
    if not isinstance(spec, dict):
        raise Skip("bad_table", f"a table must be a JSON object, got {type(spec).__name__}")
    kind, rows, cols = spec.get("type"), spec.get("rows"), spec.get("columns")
    if kind not in KINDS:
        raise Skip("bad_table", f"type {kind!r} not in {KINDS}")
    if not rows or not cols or not isinstance(rows, list) or not isinstance(cols, list):
        raise Skip("empty_table", "no rows or no columns")
    width = 3 if kind == "scatter" else len(cols) + 1
    for r in rows:
        if not isinstance(r, list) or len(r) != width:
            raise Skip("bad_table", f"row {r!r} should have {width} cells")
        for v in r[1:]:
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v):
                raise Skip("bad_table", f"non-numeric value {v!r} in row {r[:1]!r}")
    if kind == "pie" and (len(cols) != 1 or any(r[1] <= 0 for r in rows)):
        raise Skip("bad_table", "a pie needs one column of positive values")
    decimals = spec.get("decimals")
    if decimals is None:
        decimals = max((len(repr(float(v)).split(".")[1].rstrip("0")) for r in rows for v in r[1:]), default=0)
    return {"lang": "und", "script": "Latn", "title": "", "style": {}, **spec, "decimals": min(int(decimals), 6)}


def label_html(spec: dict) -> str:
    d = spec["decimals"]
    head = [""] + list(spec["columns"])
    return html_table([head] + [[r[0]] + [_fmt(v, d) for v in r[1:]] for r in spec["rows"]])


def chart_figure(spec: dict):
    """The matplotlib Figure of ``spec`` (object API + Agg: no global pyplot state)."""
    import matplotlib
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    st = {"sheet": "default", "font": "DejaVu Sans", "size": [6.0, 4.0], "dpi": 96, "fontsize": 10,
          "legend": "best", "annotate": False, "grid": False, "marker": "o", "seed": 0, **spec.get("style", {})}
    d, kind, rows, cols = spec["decimals"], spec["type"], spec["rows"], spec["columns"]
    rc = {"font.family": [st["font"], "Noto Sans CJK JP", "DejaVu Sans"], "font.size": st["fontsize"],
          "axes.unicode_minus": False, "svg.hashsalt": "ocrflow"}
    with matplotlib.style.context(st["sheet"]), matplotlib.rc_context(rc):
        fig = Figure(figsize=tuple(st["size"]), dpi=st["dpi"])
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        cats = [r[0] for r in rows]
        x = np.arange(len(rows))
        if kind in ("bar", "hbar"):
            w = 0.8 / len(cols)
            for j, name in enumerate(cols):
                vals = [r[j + 1] for r in rows]
                pos = x - 0.4 + w * (j + 0.5)
                bars = (ax.barh if kind == "hbar" else ax.bar)(pos, vals, w * 0.95, label=name)
                if st["annotate"]:
                    ax.bar_label(bars, labels=[_fmt(v, d) for v in vals], fontsize=max(6, st["fontsize"] - 3))
            (ax.set_yticks if kind == "hbar" else ax.set_xticks)(x, cats)
        elif kind == "stacked_bar":
            bottom = np.zeros(len(rows))
            for j, name in enumerate(cols):
                vals = np.array([r[j + 1] for r in rows], dtype=float)
                ax.bar(x, vals, 0.6, bottom=bottom, label=name)
                bottom += vals
            ax.set_xticks(x, cats)
        elif kind == "line":
            for j, name in enumerate(cols):
                vals = [r[j + 1] for r in rows]
                ax.plot(x, vals, marker=st["marker"], label=name)
                if st["annotate"]:
                    for xi, v in zip(x, vals):
                        ax.annotate(_fmt(v, d), (xi, v), textcoords="offset points", xytext=(0, 4),
                                    ha="center", fontsize=max(6, st["fontsize"] - 3))
            ax.set_xticks(x, cats)
        elif kind == "scatter":
            for name in dict.fromkeys(r[0] for r in rows):
                pts = [(r[1], r[2]) for r in rows if r[0] == name]
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=st["marker"], label=name)
        elif kind == "pie":
            vals = [r[1] for r in rows]
            ax.pie(vals, labels=cats, autopct=(lambda p: f"{p:.1f}%") if st["annotate"] else None,
                   startangle=90, counterclock=False)
            ax.set_aspect("equal")
        if kind in ("bar", "stacked_bar", "line") and len(rows) > 5:
            ax.tick_params(axis="x", labelrotation=30)
        if spec.get("title"):
            ax.set_title(spec["title"])
        if st["grid"] and kind != "pie":
            ax.grid(True, alpha=0.4)
        if kind != "pie" and (len(cols) > 1 or kind == "scatter" and len({r[0] for r in rows}) > 1 or st["legend"] == "outside"):
            if st["legend"] == "outside":
                ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=max(6, st["fontsize"] - 1))
            else:
                ax.legend(loc=st["legend"], fontsize=max(6, st["fontsize"] - 1))
        fig.tight_layout()
    return fig


def render_chart(spec: dict):
    """``spec`` -> RGB PIL image."""
    from PIL import Image

    fig = chart_figure(spec)
    fig.canvas.draw()
    return Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())


class ChartSource(LinesSource):
    name = "charts"

    def __init__(self, input: str | None = None, **options):
        require("matplotlib", "matplotlib", "sources")
        super().__init__(input=input, **options)

    def make(self, index, rng):
        if self.lines is None:
            spec = random_spec(rng)
        else:
            try:
                spec = json.loads(self.lines[index])
            except ValueError as e:
                raise Skip("bad_json", str(e)) from None
            spec = validate_spec(spec)
        image = render_chart(spec)
        return GeneratedSample(
            image=image, labels={"figure": {"prompt": PROMPT_FIGURE, "text": label_html(spec)}},
            source_path=self.options["input"] or f"generated:{self.name}", lang=spec["lang"], script=spec["script"],
            extra={"chart": spec["type"]})
