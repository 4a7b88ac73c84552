"""Model flywheel for minority languages (DeepSeek-OCR paper, section 3.4).

A recognizer trained on line patches whose labels come from trustworthy PDF text layers
("fitz patches") labels the patches cut from pages without usable text, round after round.
This package holds the torch-free data side, so engine workers and detectors never import
torch:

* ``linepages``  synthetic line pages with line-level ground truth (born-digital seed pages and
                 image-only "scans"), pseudo-text built from each script's letters and signs.
* ``trust``      per-line trust of a text layer and the script check shared with acceptance.
* ``patches``    line patches: cutting from text layers, cutting by detector boxes, the square
                 canvas the recognizer reads, and patch shards (webdataset, engine format).
* ``detect``     line detectors behind the layout-source interface: the text layer's own line
                 boxes and PaddleOCR's PP-OCRv4 text detector (ONNX shipped in a wheel).
* ``accept``     acceptance filters for recognizer labels, each rejection with its reason.
* ``reassemble`` accepted patches -> page-level fine labels (boxes + text, paper format).
* ``baseline``   Tesseract 5 on the same held-out patches (an OCR engine users know).

The rounds (training, batched labelling, reports) live in ``train/flywheel/``.
"""
