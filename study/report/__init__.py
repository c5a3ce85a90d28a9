"""The report: section tables, sentences, plots, markdown / HTML, power simulation, cost."""
