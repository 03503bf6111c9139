# Dataflow worker image for aisthetics, also usable as its Flex Template launcher.
#
# Built on Beam's own SDK image for the pinned Beam and Python (Beam's recommended way
# to ship heavy dependencies such as TensorFlow): workers start without pip-installing
# anything, and the model is converted for LiteRT at build time, so no worker ever
# imports TensorFlow or converts again.
#
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/aisthetics:0.1.0 .
#   docker push REGION-docker.pkg.dev/PROJECT/REPO/aisthetics:0.1.0
#
# Keep the tag below in step with apache-beam and python_requires in setup.py
# (tests/test_dataflow.py checks that they agree).
FROM gcr.io/dataflow-templates-base/python311-template-launcher-base AS launcher

FROM apache/beam_python3.11_sdk:2.77.0

# Flex Template support: the launcher binary and the file it runs.
COPY --from=launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/opt/aisthetics/dataflow/launch.py

ENV AISTHETICS_CACHE_DIR=/opt/aisthetics/cache
WORKDIR /opt/aisthetics
COPY setup.py README.md ./
COPY aisthetics_transforms ./aisthetics_transforms
COPY pipeline ./pipeline
COPY dataflow ./dataflow
RUN pip install --no-cache-dir . \
    && python -c "import aisthetics_transforms as a; print(a.get_aisthetics_model().model_version)"

# The SDK image's entry point (/opt/apache/beam/boot) is inherited unchanged.
