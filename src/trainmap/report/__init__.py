"""The report: reads a finished results folder and writes its self-contained ``report.html``.

The lenses write results folders (through :mod:`trainmap.results`) and never import this
package; the CLI builds the report after each command, and so can you::

    from trainmap.report import write_report
    write_report("results/my-model")
"""

from trainmap.report.html import write_report, write_reports

__all__ = ["write_report", "write_reports"]
