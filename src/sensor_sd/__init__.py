"""sensor-sd: Prometheus service discovery for fleets of embedded sensors.

Data flows one way: inventory source -> validated snapshot -> publishers
(file_sd file, http_sd endpoint) -> Prometheus.
"""

__version__ = "0.1.0"
