"""The web page (``kpmask --mode app``) and the files it keeps and accepts."""
