"""The camera's colours (RGB, uint8), shared by every view so perception sees one palette."""

OFF_ROAD = (34, 85, 34)  # grass
ROAD = (90, 90, 90)  # asphalt
LANE_MARKING = (230, 230, 230)  # dashed lines between lanes
ROAD_EDGE = (240, 200, 40)  # solid lines at the road's borders
OTHER_VEHICLE = (40, 120, 255)
EGO_VEHICLE = (255, 64, 64)
SKY = (150, 190, 235)  # front camera only
