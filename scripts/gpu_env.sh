# Sourced by the scripts/gpu_*.sh device scripts: installs the Vulkan loader carried in .gpu/
# (once per machine) and points the loader at the NVIDIA driver. Expects G=<checkout>/.gpu.
[ -x "$G/equimodal" ] || { echo "no $G/equimodal: run scripts/prepare_gpu_run.sh first and carry .gpu" >&2; return 2; }
if [ ! -e /tmp/.equimodal-vulkan-installed ]; then
    for f in "$G"/*.deb; do dpkg -x "$f" /; done
    ldconfig
    touch /tmp/.equimodal-vulkan-installed
fi
export VK_DRIVER_FILES=${VK_DRIVER_FILES:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json}
export EQUIMODAL_BACKEND=${EQUIMODAL_BACKEND:-vulkan} EQUIMODAL_CHECKED_KERNELS=0
