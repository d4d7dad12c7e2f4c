"""The synthetic demo cohort: H&E-like pyramidal TIFF slides with QuPath annotations."""
